"""Fixtures for the PET tests; the nets themselves live in pet_helpers.py."""
import mindspore as ms
import pytest

from tests.pet.pet_helpers import Toy, cpu_device, tiny_llama


@pytest.fixture(autouse=True)
def pynative():
    """PyNative unless a test asks for graph; the mode is process-global, so restore it."""
    cpu_device()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield


@pytest.fixture
def toy():
    return Toy()


@pytest.fixture
def llama():
    return tiny_llama()
