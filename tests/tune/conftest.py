from tests.train.conftest import make_config, toy_data  # noqa: F401  (the tiny model's toy task)
