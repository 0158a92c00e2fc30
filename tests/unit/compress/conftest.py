"""Fixtures for the compression tests: model files and sample directories in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from tests.unit.compress.builders import conv_model, write_images


@pytest.fixture
def conv_model_file(tmp_path: Path) -> Callable[..., Path]:
    def make(**kwargs) -> Path:
        path = tmp_path / f"conv-{len(list(tmp_path.glob('conv-*.onnx')))}.onnx"
        onnx.save(conv_model(**kwargs), str(path))
        return path
    return make


@pytest.fixture
def image_dir(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str, count: int, **kwargs) -> Path:
        return write_images(tmp_path / name, count, **kwargs)
    return make
