"""Shared helpers and fixtures' plumbing for the tests; test modules import only from here.

Anything a test needs from outside the project (the shared data, Redis, ffmpeg, redis-server,
mosquitto, chromium) that is missing is a test FAILURE with a clear message, never a skip.
"""
