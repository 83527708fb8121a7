"""Pre- and postprocessing code the app tests name by import path, as a
user's own module would be (``tests.app.user_code:to_counts``)."""

from __future__ import annotations

import threading

import numpy as np

from deployments.errors import BadRequest


def to_counts(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pixels sent in [0, 1]; the model takes the digits' counts, 0-16."""
    return {"pixels": inputs["pixels"] * 16}


async def to_counts_async(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return to_counts(inputs)


def with_digit(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scores kept, the best digit added as an output of its own."""
    return {**outputs, "digit": outputs["probabilities"].argmax(axis=1)}


def digit_only(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scores dropped: only the best digit answered."""
    return {"digit": outputs["probabilities"].argmax(axis=1)}


def no_negatives(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if (inputs["pixels"] < 0).any():
        raise BadRequest("pixels must not be negative")
    return inputs


def fragile(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fails on pixels above 100, with a message the client must not see."""
    if (inputs["pixels"] > 100).any():
        raise ValueError("secret internal detail")
    return inputs


def as_lists(outputs: dict[str, np.ndarray]) -> dict[str, object]:
    return {name: array.tolist() for name, array in outputs.items()}


NOT_CALLABLE = 3


class AsyncDoubler:
    """An object whose ``__call__`` is async (as callable classes often are)."""

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: array * 2 for name, array in inputs.items()}


async_doubler = AsyncDoubler()


def _plain(fn):  # a decorator that hides the coroutine function behind a plain one
    def call(*args):
        return fn(*args)
    return call


@_plain
async def hidden_async(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: array + 1 for name, array in inputs.items()}


# Set to let every call of ``hang`` return (the tests clear it first).
RELEASE = threading.Event()


def hang(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Code that hangs (on some inputs, say) until the test releases it."""
    RELEASE.wait()
    return inputs


def crop_or_refuse(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The example's crop, refusing canvases whose first pixel is lit (a
    pipeline transform's own 400)."""
    from examples.digit_reader.crop import crop_digits

    if (inputs["image"][:, 0, 0] > 0.5).any():
        raise BadRequest("a lit corner: not a canvas this reader takes")
    return crop_digits(inputs)


def crop_many(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The example's crop, each made 100 times over (a transform that fans
    out on the data, as one making several crops per image does)."""
    from examples.digit_reader.crop import crop_digits

    return {"image": np.repeat(crop_digits(inputs)["image"], 100, axis=0)}


def crop_badly(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Crops of the wrong size: the pipeline's fault, not the client's."""
    return {"image": np.zeros((len(inputs["image"]), 20, 20, 1), np.float32)}


def crash(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise ValueError("secret internal detail")


def tokenize(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Text → the sequence model's token ids (a letter's code mod 100) and
    mask, padded to the longest text of the request."""
    texts = [t.decode() if isinstance(t, bytes) else str(t) for t in inputs["text"]]
    if not all(texts):
        raise BadRequest("text must not be empty")
    longest = max(map(len, texts))
    ids = np.zeros((len(texts), longest), np.int32)
    mask = np.zeros((len(texts), longest), np.int32)
    for i, text in enumerate(texts):
        ids[i, :len(text)] = [ord(c) % 100 for c in text]
        mask[i, :len(text)] = 1
    return {"input_ids": ids, "attention_mask": mask}
