"""Shared fixtures."""
import pytest

from tests.helpers import write_text_corpus


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """(root, corpus folder, byte-level tokenizer folder) for seconds-long train.py runs."""
    from nanochat.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("run")
    corpus = write_text_corpus(root / "corpus", n_files=6, words=1500)
    tok_dir = root / "tok"
    Tokenizer.byte_level().save(tok_dir)
    return root, corpus, tok_dir


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine waiting for a second one costs 10-20x
    (a module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
