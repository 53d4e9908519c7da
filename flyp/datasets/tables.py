"""Parquet tables of images, and the torch Dataset that reads them.

A table has the columns ``image_id`` and ``label`` and either ``image`` (encoded PNG/JPEG bytes,
used by the embedded benchmark) or ``path`` (an image file relative to the table's folder, used by
the real benchmarks, whose images stay files on disk).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from flyp.datasets.parquet import REQUIRED_COLUMNS, read_table, write_table  # noqa: F401
from flyp.io import UserError


class ImageTable(torch.utils.data.Dataset):
    """Images and labels of one table; ``transform`` maps a PIL image to a tensor.

    Embedded images are decoded once and kept (they are tiny); file-backed images are read lazily.
    """

    def __init__(self, path: str | Path, transform=None, df: pd.DataFrame | None = None):
        self.path = Path(path)
        self.df = read_table(self.path) if df is None else df
        self.transform = transform
        self.labels = torch.tensor(self.df["label"].to_numpy(), dtype=torch.long)
        if "image" in self.df.columns:
            self._images = [self._decode(b, i) for i, b in enumerate(self.df["image"])]
        elif "path" in self.df.columns:
            self._images = None
        else:
            raise UserError(f"{self.path}: needs an 'image' (bytes) or 'path' column")

    def __len__(self) -> int:
        return len(self.df)

    def _decode(self, data: bytes, i: int) -> Image.Image:
        """An embedded image; bytes that are not an image name the table and the image id."""
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except (OSError, TypeError, ValueError) as e:  # TypeError/ValueError: null or odd bytes
            raise UserError(
                f"{self.path}: image {self.df['image_id'].iat[i]!r} (row {i}) is not "
                f"a readable image ({type(e).__name__}: {e}); rerun the data step"
            ) from None

    def load_image(self, i: int) -> Image.Image:
        if self._images is not None:
            return self._images[i]
        file = self.path.parent / self.df["path"].iat[i]
        try:
            with Image.open(file) as im:
                image = im.convert("RGB")
        except OSError as e:
            raise UserError(
                f"{file}: cannot read image {self.df['image_id'].iat[i]!r} of "
                f"{self.path.name} ({e})"
            ) from None
        if "crop" in self.df.columns:  # a border to drop before any transform (ObjectNet: 2 px)
            b = int(self.df["crop"].iat[i])
            image = image.crop((b, b, image.width - b, image.height - b))
        return image

    def __getitem__(self, i: int):
        image = self.load_image(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]
