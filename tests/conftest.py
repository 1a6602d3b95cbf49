import sys
from pathlib import Path

# Test helper modules (core_support, media, ...) import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
