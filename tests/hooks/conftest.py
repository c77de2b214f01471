"""The hook, cache, intervention and generation tests here run on every supported family."""
import pytest


@pytest.fixture(scope="session")
def model(family_model):
    return family_model
