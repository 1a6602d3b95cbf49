"""split_infer/redact.py: credentials never reach a log line or an error message."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from split_infer import service
from split_infer.redact import forget_secrets, redact, redact_url, register_config, register_secret, register_url

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_registry():
    forget_secrets()
    yield
    forget_secrets()


@pytest.mark.parametrize(("url", "want"), [
    ("redis://user:pass1234@redis.lan:6379/0", "redis://***@redis.lan:6379/0"),
    ("rediss://:pa@ss@w0rd@10.0.0.5:6380/1", "rediss://***@10.0.0.5:6380/1"),  # '@' inside the password
    ("redis://default:p%40ss@h/0", "redis://***@h/0"),
    ("rtsp://admin:s3cr3t@192.168.1.10:554/Streaming/Channels/101", "rtsp://***@192.168.1.10:554/Streaming/Channels/101"),
    ("http://user:s3cr%40t@127.0.0.1:8554/feed", "http://***@127.0.0.1:8554/feed"),
    ("http://cam.lan/video.cgi?user=bob&password=hunter2&res=hd", "http://cam.lan/video.cgi?user=bob&password=***&res=hd"),
    ("http://cam.lan/mjpg?token=abcdef&key=k3y&secret=x&auth=y&pwd=z",
     "http://cam.lan/mjpg?token=***&key=***&secret=***&auth=***&pwd=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("/data/street.mp4", "/data/street.mp4"),
    ("0", "0"),
])
def test_redact_url(url, want):
    assert redact_url(url) == want


def test_redact_free_text():
    text = ("Error connecting to redis://u:hunter22@h:6379/0: refused; GET /api/live?ticket=abc.123.ff HTTP/1.1; "
            "header Authorization: Bearer tok3n-value; camera rtsp://a:b@c@cam/x: timeout")
    out = redact(text)
    for secret in ("hunter22", "abc.123.ff", "tok3n-value", "a:b@c"):
        assert secret not in out, out
    assert "redis://***@h:6379/0" in out and "ticket=***" in out and "Bearer ***" in out and "rtsp://***@cam/x" in out
    assert redact("the edge token is edge-t0ken!", secrets=["edge-t0ken!"]) == "the edge token is ***"


def test_registered_secrets_are_masked_raw_and_percent_encoded():
    register_secret("s3cr@t/pw", "ab")  # too short to register: it would blank out words
    assert redact("a s3cr@t/pw b s3cr%40t%2Fpw c") == "a *** b *** c"
    assert redact("ab cab") == "ab cab"
    register_url("redis://user:r3dis%40pw@h/0?token=querytok")
    assert redact("AUTH r3dis@pw failed; token querytok") == "AUTH *** failed; token ***"
    register_config({"edge": {"token": "edge-token-1", "cameras": [{"url": "rtsp://u:campw99@cam/1"}]},
                     "tokens": ["tok-a-123", "tok-b-456"]})
    assert redact("edge-token-1 campw99 tok-a-123 tok-b-456") == "*** *** *** ***"


# Passwords of any printable characters that may appear in a URL's user info, '@' ':' '/' '?' '#'
# included. The marker Q keeps them distinguishable from the host and path.
PASSWORD = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd", "Po", "Sm"), blacklist_characters="'\"<>`\\"),
                   min_size=1, max_size=24).map(lambda s: "Q" + s)


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(["redis", "rediss", "rtsp", "http", "https"]), password=PASSWORD,
       user=st.sampled_from(["", "admin", "default"]), in_text=st.booleans())
def test_no_password_survives(scheme, password, user, in_text):
    url = f"{scheme}://{user}:{password}@cam-1.lan:554/stream/1"
    out = redact(f"cannot open {url} (refused)") if in_text else redact_url(url)
    assert password not in out
    assert "cam-1.lan:554/stream/1" in out


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["password", "PASSWORD", "token", "key", "secret", "auth", "access_token", "ticket"]),
       value=st.text("abcdefXYZ0123456789-_.~%", min_size=4, max_size=30), other=st.booleans())
def test_no_secret_query_parameter_survives(name, value, other):
    url = f"http://cam.lan/feed?{'res=hd&' if other else ''}{name}={value}&fps=10"
    out = redact_url(url)
    assert out == f"http://cam.lan/feed?{'res=hd&' if other else ''}{name}=***&fps=10"


def test_the_services_log_handler_redacts_messages_arguments_and_tracebacks(capsys):
    register_secret("the-edge-token-42")
    service.configure_logging([("", logging.INFO)])
    log = logging.getLogger("split_infer.test_redact")
    try:
        log.info("ingest up, redis %s", "redis://:r3dis-pw@h:6379/0")
        log.warning("camera c1: cannot open http://u:s3cr%40t@127.0.0.1:9/feed?token=tok-99")
        log.info("token is %s", "the-edge-token-42")
        try:
            raise ConnectionError("connect to rediss://user:tb-pw-77@h/0 failed")
        except ConnectionError:
            log.exception("failed")
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, service._ServiceHandler)]:
            root.removeHandler(h)
    err = capsys.readouterr().err
    assert "ingest up, redis redis://***@h:6379/0" in err and "Traceback" in err
    for secret in ("r3dis-pw", "s3cr%40t", "tok-99", "the-edge-token-42", "tb-pw-77"):
        assert secret not in err, err


def test_json_log_lines_are_redacted_too(capsys):
    service.configure_logging([("", logging.INFO)], fmt="json")
    try:
        try:
            raise RuntimeError("redis://u:json-pw-1@h/0")
        except RuntimeError:
            logging.getLogger("split_infer.test_redact").exception("at %s", "rtsp://a:json-pw-2@cam/1")
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, service._ServiceHandler)]:
            root.removeHandler(h)
    err = capsys.readouterr().err
    assert '"exception"' in err and "json-pw-1" not in err and "json-pw-2" not in err, err
