"""Keep the toolchains' own chatter (absl/TF logs, tqdm bars, version warnings) off the terminal.

The converter prints its own progress lines; what the libraries print on top of them hides the
one line that matters when something fails. ``edgeship convert --verbose`` keeps it all.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

#: environment read by the toolchains at import time.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow / LiteRT C++ logs
    "GLOG_minloglevel": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
    "TQDM_DISABLE": "1",  # coremltools and ai-edge-quantizer progress bars
    "TF_ENABLE_ONEDNN_OPTS": "0",
}
QUIET_LOGGERS = ("coremltools", "absl", "torch", "onnxscript", "root", "tensorflow", "jax")


def quiet_toolchains() -> None:
    """Silence toolchain logging and warnings for this process (call before heavy imports)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name if name != "root" else None).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


@contextlib.contextmanager
def hidden_progress_bars() -> Iterator[None]:
    """Send what toolchains print on ``sys.stderr`` (tqdm bars) nowhere while the block runs.

    :class:`converter.progress.Progress` keeps the stream it was made with, so the converter's
    own progress lines still show.
    """
    with contextlib.redirect_stderr(io.StringIO()):
        yield
