"""NumPy forward pass vs tracr's own JAX model (``assembled_model.apply``).

Stock compiles are shared with tests/test_compiler.py through its session memo
(``stock_reference``), so running both files together compiles each program
with stock tracr only once.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_compiler import (  # noqa: E402  pylint: disable=g-import-not-at-top
    ALL_CASES,
    fast_compile,
    program_for,
    stock_reference,
)

from metamodels.compiler import model_differences  # noqa: E402
from metamodels.forward import encode, forward_ids, run  # noqa: E402
from tracr.rasp import rasp  # noqa: E402

FORWARD_LIB = [
    "length_numerical",
    "reverse",
    "sort_freq",
    "frac_prevs_causal",
    "shuffle_dyck2",
    "detect_pattern",
    "shift_by",
    "nary_sequencemap",
]
# Random programs (all compilable by stock tracr), categorical and numerical.
FORWARD_RANDOM = [
    "random_1", "random_3", "random_6", "random_9", "random_13", "random_16",
    "random_20",
]
N_PER_LENGTH = 12
N_APPLY = 2  # inputs also run one by one through assembled_model.apply


def _inputs(name: str) -> dict[int, list[list]]:
  """Random inputs for two lengths (max and a shorter one), seeded by name."""
  case = ALL_CASES[name]
  rng = random.Random(name)
  vocab = sorted(case.vocab, key=repr)
  n = case.max_seq_len
  lengths = sorted({n, rng.randint(1, max(1, n - 1))})
  return {
      length: [[rng.choice(vocab) for _ in range(length)]
               for _ in range(N_PER_LENGTH)] for length in lengths
  }


def _stock_decode(assembled, unembedded_row) -> list:
  """Decodes one row of unembedded output the way assembled.apply does."""
  decoded = unembedded_row.tolist()
  if assembled.output_encoder:
    decoded = assembled.output_encoder.decode(decoded)
  return decoded


def _stock_batched(assembled, model, seqs: list[list]):
  """tracr's model on a batch of equal-length inputs (the function apply uses).

  Returns (decoded outputs without BOS, raw unembedded [B, T]).
  """
  import jax.numpy as jnp

  ids = encode(model, seqs)
  # The input encoder must agree with ours.
  for row, seq in zip(ids, seqs):
    assert assembled.input_encoder.encode([model.bos_token, *seq]) == list(row)
  out = assembled.forward(assembled.params, jnp.asarray(ids))
  unemb = np.asarray(out.unembedded_output)
  return [_stock_decode(assembled, r)[1:] for r in unemb], unemb


def _outputs_match(model, ours, ref) -> bool:
  if model.categorical_output:
    return ours == ref
  return len(ours) == len(ref) and bool(
      np.allclose(np.asarray(ours, np.float64), np.asarray(ref, np.float64),
                  rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize("name", FORWARD_LIB + FORWARD_RANDOM)
def test_run_matches_tracr_apply(name):
  ref = stock_reference(name)
  assert ref.error is None, f"stock tracr failed: {ref.error!r}"
  model = fast_compile(name)
  assert model_differences(model, ref.model) == []
  assembled = ref.assembled

  inputs = _inputs(name)
  all_seqs = [s for seqs in inputs.values() for s in seqs]
  ours_all = run(model, all_seqs)
  k = 0
  for length, seqs in inputs.items():
    ref_out, ref_unemb = _stock_batched(assembled, model, seqs)
    ours = ours_all[k:k + len(seqs)]
    k += len(seqs)
    for seq, a, b in zip(seqs, ours, ref_out):
      assert _outputs_match(model, a, b), (name, seq, a, b)
    # Raw unembedded output of forward_ids (BOS position included).
    raw = forward_ids(model, encode(model, seqs))
    if model.categorical_output:
      np.testing.assert_array_equal(raw, ref_unemb)
    else:
      np.testing.assert_allclose(raw, ref_unemb, rtol=1e-5, atol=1e-5)
    assert all(len(o) == length for o in ours)
    if not model.categorical_output:
      assert all(type(x) is float for o in ours for x in o)

  # The literal reference: assembled_model.apply on single inputs.
  longest = inputs[max(inputs)]
  for seq in longest[:N_APPLY]:
    expected = assembled.apply([model.bos_token, *seq]).decoded[1:]
    (got,) = run(model, [seq])
    assert _outputs_match(model, got, expected), (name, seq, got, expected)


# ---------------------------------------------------------------------------
# Checks that need no stock compile.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,exact", [
    ("reverse", True), ("hist", True), ("sort_freq", True),
    ("shuffle_dyck2", True), ("count", True), ("frac_prevs", False),
    ("length", True), ("detect_pattern", True),
])
def test_run_computes_the_rasp_program(name, exact):
  """On these lib programs tracr's construction is exact: the compiled model
  reproduces rasp.evaluate on every input (BOS excluded)."""
  case = ALL_CASES[name]
  model = fast_compile(name)
  program = program_for(name)
  rng = random.Random(0)
  vocab = sorted(case.vocab, key=repr)
  seqs = [[rng.choice(vocab) for _ in range(rng.randint(1, case.max_seq_len))]
          for _ in range(60)]
  outs = run(model, seqs)
  for seq, out in zip(seqs, outs):
    expected = rasp.evaluate(program, seq)
    if name == "detect_pattern":
      # None-padded positions decode to whatever argmax(0-vector) gives.
      pairs = [(o, e) for o, e in zip(out, expected) if e is not None]
      assert all(o == e for o, e in pairs), (seq, out, expected)
    elif exact:
      assert out == expected, (seq, out, expected)
    else:
      np.testing.assert_allclose(out, expected, atol=1e-4)


def test_run_mixed_lengths_keeps_order():
  model = fast_compile("reverse")
  seqs = [list("abcd"), ["c"], list("ab"), list("dcbaa"), list("ba"), ["a"]]
  outs = run(model, seqs)
  assert outs == [s[::-1] for s in seqs]
  for s, o in zip(seqs, outs):
    assert run(model, [s]) == [o]
  # Chunked batches give the same answer.
  assert run(model, seqs * 5, batch_size=2) == outs * 5


def test_encode_and_errors():
  model = fast_compile("reverse")
  ids = encode(model, [list("ab"), list("ba")])
  assert ids.shape == (2, 3)
  assert (ids[:, 0] == model.bos_id).all()
  assert [model.input_tokens[i] for i in ids[0, 1:]] == ["a", "b"]
  with pytest.raises(ValueError):
    encode(model, [["z"]])
  with pytest.raises(ValueError):
    run(model, [list("abcdab")])  # longer than max_seq_len=5
  with pytest.raises(ValueError):
    run(model, [[]])
  with pytest.raises(ValueError):
    encode(model, [list("ab"), list("abc")])


def test_numerical_output_and_float64():
  model = fast_compile("frac_prevs")
  seqs = [list("hello"), list("lll"), list("eh")]
  out32 = run(model, seqs)
  out64 = run(model, seqs, dtype=np.float64)
  for a, b, s in zip(out32, out64, seqs):
    exp = [sum(c == "l" for c in s[:i + 1]) / (i + 1) for i in range(len(s))]
    np.testing.assert_allclose(a, exp, atol=1e-5)
    np.testing.assert_allclose(b, exp, atol=1e-5)
  raw = forward_ids(model, encode(model, [list("hello")]))
  assert raw.shape == (1, 6) and raw.dtype == np.float32
