"""Trainer fixtures."""

from __future__ import annotations

import pytest
import torch

from doppel.conversation import Conversation
from support.chats import chat

torch.set_num_threads(1)  # tests share two cores with servers and each other


@pytest.fixture
def conversations() -> list[Conversation]:
    return chat()
