"""Test-only stand-in for torchvision.

The vendored ComfyUI imports torchvision at module load for Stable Cascade's
image coders, which these tests never build. The CPU torch used in CI has no
matching torchvision wheel, so tests put this empty package first on sys.path
when the real one cannot be imported. Any attribute use fails loudly.
"""


def __getattr__(name):
    raise ImportError(f"torchvision.{name}: the test stub has no torchvision; install a torchvision "
                      f"that matches torch to use it")
