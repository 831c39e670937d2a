"""CLI hygiene: third-party INFO chatter (faiss's loader) is hidden unless -v."""
import subprocess
import sys

import pytest

SNIPPET = """
import logging, sys
from hloc_bpnp import cli
cli.main(sys.argv[1:])  # no subcommand: configures logging, prints the help, returns 1
import faiss  # its loader logs ModuleNotFoundError(... swigfaiss_avx2 ...) at INFO
import PIL.PngImagePlugin
logging.getLogger("hloc_bpnp.test").info("our own info line")
logging.getLogger("faiss.loader").warning("a faiss warning")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_info_hidden_unless_verbose(verbose):
    args = ["-v"] if verbose else []
    p = subprocess.run([sys.executable, "-c", SNIPPET, *args], capture_output=True, text=True, timeout=120)
    err = p.stderr
    assert "our own info line" in err and "a faiss warning" in err, err
    if verbose:
        assert "faiss.loader" in err and "Loading faiss" in err
    else:
        assert "swigfaiss" not in err and "Loading faiss" not in err, err


def test_configure_logging_levels(caplog):
    import logging

    from hloc_bpnp import cli

    saved = {n: logging.getLogger(n).level for n in cli.THIRD_PARTY_LOGGERS}
    try:
        cli.configure_logging(False)
        with caplog.at_level(logging.INFO):
            for name in ("faiss.loader", "PIL.PngImagePlugin", "matplotlib.font_manager", "h5py._conv", "urllib3"):
                logging.getLogger(name).info("noise from %s", name)
            logging.getLogger("hloc_bpnp.localization").info("kept")
        assert [r.getMessage() for r in caplog.records] == ["kept"]
        cli.configure_logging(True)
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("faiss.loader").info("now shown")
        assert [r.getMessage() for r in caplog.records] == ["now shown"]
    finally:
        for n, lv in saved.items():
            logging.getLogger(n).setLevel(lv)
