"""Which rows of a reference tensor a batch is: for estimators whose train side depends on *which*
training sample a row is (its place in the recorded trajectory, its column of a datamodel), not only
on its content.

The store, the runner and self-influence pass row slices of ``task.x_train`` (views of its storage),
which are resolved exactly from the view's offset. Any other batch is matched by content (the bytes
of the input row and its label); exact duplicates (same input and label) then resolve to the first.
"""

from __future__ import annotations

import hashlib

import torch

from precompute.errors import MethodError


def _key(x_row: torch.Tensor, y: int) -> bytes:
    data = x_row.detach().to("cpu").contiguous().numpy().tobytes()
    return hashlib.blake2b(data + int(y).to_bytes(8, "little", signed=True), digest_size=16).digest()


class RowIndex:
    """Resolve batches ``(x [b, ...], y [b])`` to row indices ``[b]`` of ``(x_ref [n, ...], y_ref [n])``."""

    def __init__(self, x_ref: torch.Tensor, y_ref: torch.Tensor, what: str):
        self.x_ref, self.y_ref, self.what = x_ref, y_ref, what
        self._by_content: dict[bytes, int] | None = None

    def _view_start(self, x: torch.Tensor) -> int | None:
        ref = self.x_ref
        if not (isinstance(x, torch.Tensor) and isinstance(ref, torch.Tensor)) or x.dim() != ref.dim() or len(x) == 0:
            return None
        if x.untyped_storage().data_ptr() != ref.untyped_storage().data_ptr() or x.stride() != ref.stride() \
                or x.shape[1:] != ref.shape[1:] or ref.stride(0) == 0:
            return None
        offset = x.storage_offset() - ref.storage_offset()
        if offset % ref.stride(0):
            return None
        start = offset // ref.stride(0)
        return start if 0 <= start and start + len(x) <= len(ref) else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = self._view_start(x)
        if start is not None:
            idx = torch.arange(start, start + len(x))
            if torch.equal(self.y_ref[idx].to("cpu"), y.to("cpu")):
                return idx
        if self._by_content is None:
            table: dict[bytes, int] = {}
            for i in range(len(self.y_ref)):
                table.setdefault(_key(self.x_ref[i], int(self.y_ref[i])), i)
            self._by_content = table
        out = []
        for r in range(len(x)):
            i = self._by_content.get(_key(x[r].to(self.x_ref.dtype), int(y[r])))
            if i is None:
                raise MethodError(f"{self.what}: row {r} of the batch is not one of its samples (input and label "
                                  "differ from every one)")
            out.append(i)
        return torch.tensor(out, dtype=torch.long)
