"""The decoding grammar: accepts every canonical sequence, never dead-ends, and
everything it lets through decodes to a canonical, well-formed program."""

from __future__ import annotations

import numpy as np
import pytest

from metamodels.rasp import lambdas as L
from metamodels.rasp.grammar import Grammar, GrammarError
from metamodels.rasp.program import ancestors, canonicalize, to_rasp, validate_structure, value_sets
from metamodels.rasp.sampler import _DeadEnd, construct, domain
from metamodels.rasp.tokenizer import Vocab, decode, encode
from metamodels.zoo.compiler import compile_program
from tests.tiny import small_cfg

CONSTANTS = [0, 1, 2, 3, 4, 5]
VALUES, MAX_SEQ_LEN = [1, 2, 3], 4  # small_cfg's input domain


@pytest.fixture(scope="module")
def cfg(default_params):
    return small_cfg(default_params)  # default sampler params, small input domain


@pytest.fixture(scope="module")
def vocab(cfg):
    return Vocab(L.Tables(cfg.map_constants), cfg.max_length)


@pytest.fixture(scope="module")
def plain(vocab):
    return Grammar(vocab)


@pytest.fixture(scope="module")
def valued(vocab, cfg):
    return Grammar(vocab, cfg.vocab, cfg.max_seq_len)


@pytest.fixture(scope="module")
def sampled(cfg, vocab):
    """220 canonical programs from the sampler (default sampler params)."""
    tables = vocab.tables
    inputs = domain(cfg.vocab, cfg.max_seq_len, cfg.exhaustive_limit, cfg.eval_samples,
                    np.random.SeedSequence(11))
    rng = np.random.default_rng(11)
    out = []
    while len(out) < 220:
        length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
        try:
            raw, _ = construct(rng, cfg, tables, length, inputs)
        except _DeadEnd:
            continue
        out.append(canonicalize(raw, tables, cfg.vocab, cfg.max_seq_len)[0])
    return out


def rollout(g: Grammar, rng: np.random.Generator) -> list[int]:
    """A random sequence that always picks an allowed token."""
    st = g.start()
    seq = [g.BOS]
    while not st.done:
        m = st.allowed()
        assert m.any(), f"dead end after {g.vocab.strs(seq)}"
        tok = int(rng.choice(np.flatnonzero(m)))
        st.advance(tok)
        seq.append(tok)
        assert len(seq) <= g.max_length()
    return seq


def check_program(seq: list[int], g: Grammar):
    """Everything the grammar guarantees about a finished sequence."""
    vocab, tables = g.vocab, g.tables
    toks = vocab.strs(seq)
    program = decode(toks, tables)
    validate_structure(program, tables)
    assert encode(program) == toks  # same half-layers, same order, same EOLs
    assert ancestors(program, program.output) == {op.name for op in program.ops}
    assert any("tokens" in op.args for op in program.ops)
    assert len(program) <= g.max_ops
    to_rasp(program, tables)
    return program


def key_size_exceeded(program, tables, values, max_seq_len) -> bool:
    """tracr's assembler limit: a categorical Aggregate's value set is larger than
    the model's key size (the largest query (+2) / key (+1) space of any head)."""
    vs = value_sets(program, tables, values, max_seq_len)
    heads = [op for op in program.ops if op.kind in ("Aggregate", "SelectorWidth")]
    if not heads:
        return False
    key_size = max(max(len(vs[op.args[0]]) + 1, len(vs[op.args[1]]) + 2) for op in heads)
    return any(len(vs[op.name]) > key_size for op in heads
               if op.kind == "Aggregate" and op.encoding == "categorical")


# ---------------------------------------------------------------------------
# Ground truth


def test_every_sampled_canonical_sequence_is_accepted(sampled, plain, valued, vocab):
    for g in (plain, valued):
        for program in sampled:
            ids = vocab.ids(encode(program))
            st = g.start()
            for i in range(1, len(ids)):
                assert not st.done and not g.is_complete(ids[:i])
                assert st.allowed()[ids[i]], (encode(program), i)
                st.advance(ids[i])
            assert st.done and g.is_complete(ids)
            assert g.allowed(ids + [g.PAD]).tolist() == g.allowed(ids).tolist()


def test_grammar_from_params_accepts_the_default_vocab(default_params):
    g = Grammar.from_params(default_params)
    assert g.max_ops == default_params["sampler"]["max_length"]
    assert g.values and g.max_seq_len == default_params["zoo"]["max_seq_len"]
    assert len(g.vocab) == g.allowed([g.BOS]).shape[0]


# ---------------------------------------------------------------------------
# Random constrained rollouts


def test_random_rollouts_finish_and_round_trip(plain):
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(500):
        program = check_program(rollout(plain, rng), plain)
        lengths.add(len(program))
    assert lengths == set(range(1, plain.max_ops + 1))


def test_rollouts_with_value_sets_are_canonical_and_compile(valued):
    rng = np.random.default_rng(1)
    tables = valued.tables
    unchanged = failures = 0
    for i in range(150):
        program = check_program(rollout(valued, rng), valued)
        value_sets(program, tables, VALUES, MAX_SEQ_LEN)  # no non-0/1 numerical Aggregate
        canon, rewrites = canonicalize(program, tables, VALUES, MAX_SEQ_LEN)
        if rewrites == 0:  # the grammar cannot see behaviour classes of lambdas
            assert canon == program  # otherwise already canonical: order, args, no duplicates
            unchanged += 1
        if i < 30:
            try:
                compile_program(to_rasp(program, tables), set(VALUES), MAX_SEQ_LEN)
            except ValueError as e:  # the one documented value-set limit
                assert "value size" in str(e)
                assert key_size_exceeded(program, tables, VALUES, MAX_SEQ_LEN)
                failures += 1
            else:
                assert not key_size_exceeded(program, tables, VALUES, MAX_SEQ_LEN)
    assert unchanged > 30
    assert failures <= 3


def test_plain_rollouts_fail_to_compile_only_on_value_sets(plain):
    """Without value sets, compile failures are numerical Aggregates of non-0/1
    values (tracr's basis inference) or the key-size limit; nothing structural."""
    rng = np.random.default_rng(2)
    tables = plain.tables
    for _ in range(20):
        program = check_program(rollout(plain, rng), plain)
        try:
            compile_program(to_rasp(program, tables), set(VALUES), MAX_SEQ_LEN)
        except NotImplementedError as e:
            assert "binary" in str(e)
            assert any(op.kind == "Aggregate" and op.encoding == "numerical"
                       for op in program.ops)
        except ValueError as e:
            assert "value size" in str(e)


def test_tiny_vocab_exhaustively():
    """max_ops = 1: every sequence the grammar allows, all of them complete."""
    vocab = Vocab(L.Tables([0, 1]), 1)
    g = Grammar(vocab)
    finished = []

    def walk(st, seq):
        m = st.allowed()
        assert m.any()
        if st.done:
            finished.append(seq)
            return
        for t in np.flatnonzero(m):
            walk(st.copy().advance(int(t)), seq + [int(t)])

    walk(g.start(), [g.BOS])
    programs = {decode(vocab.strs(s), vocab.tables) for s in finished}
    assert len(programs) == len(finished)
    for seq in finished:
        check_program(seq, g)
    # Map(tokens) either encoding, SequenceMap(tokens/indices pairs with tokens),
    # SelectorWidth and SelectAggregate reading tokens.
    n_map = len(vocab.tables.maps) * 2
    n_seq = sum(len(vocab.tables.sequence_maps) if a <= b else
                sum(not s.commutative for s in vocab.tables.sequence_maps)
                for a, b in [(0, 0), (0, 1), (1, 0)])
    n_sw = 8 * 3 * 2
    n_agg = 8 * (4 * 2 - 1)  # (keys, queries, sop) over {tokens, indices}, not all indices
    assert len(finished) == n_map + n_seq + n_sw + n_agg


def test_two_op_programs_never_dead_end():
    """max_ops = 2, every branch except that only two fns per op are tried."""
    vocab = Vocab(L.Tables([0, 1]), 2)
    g = Grammar(vocab)
    fn_ids = set(vocab.ids(vocab.tables.function_tokens()))
    count = 0

    def walk(st, seq):
        nonlocal count
        m = st.allowed()
        assert m.any(), vocab.strs(seq)
        if st.done:
            check_program(seq, g)
            count += 1
            return
        nxt = [int(t) for t in np.flatnonzero(m)]
        if fn_ids.issuperset(nxt):
            nxt = [nxt[0], nxt[-1]] if len(nxt) > 1 else nxt
        for t in nxt:
            walk(st.copy().advance(t), seq + [t])

    walk(g.start(), [g.BOS])
    assert count > 1000


# ---------------------------------------------------------------------------
# Specific rules


def allows(g: Grammar, prefix: str, token: str) -> bool:
    return bool(g.allowed(g.vocab.ids(["BOS"] + prefix.split()))[g.vocab.index[token]])


@pytest.mark.parametrize("prefix, token, ok", [
    # names: the next canonical name only
    ("", "v1", True), ("", "v2", False), ("", "EOS", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO", "v1", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO", "v3", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO", "v2", True),
    # arguments: defined, in an earlier half-layer
    ("v1 categorical SelectorWidth EQ tokens", "v1", False),
    ("v1 categorical SelectorWidth EQ tokens", "v2", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO v2 categorical SelectorWidth EQ",
     "v1", False),
    # a SelectorWidth also fills its layer's MLP: what reads it goes in the next layer
    ("v1 categorical SelectorWidth EQ tokens tokens EOO EOL v2 categorical Map x+1", "v1", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO EOL EOL EOL v2 categorical Map x+1",
     "v1", True),
    # types
    ("EOL v1 numerical Map x+1 tokens EOO v2 categorical SequenceMap x-y tokens", "v1", False),
    ("EOL v1 numerical Map x+1 tokens EOO v2 categorical SequenceMap x-y tokens", "indices", True),
    ("EOL v1", "categorical", True),
    ("EOL v1 numerical", "SequenceMap", False),
    ("EOL v1 categorical", "LinearSequenceMap", False),
    ("EOL v1 categorical Map", "EQ", False),
    ("v1 categorical SelectAggregate", "x+y", False),
    ("v1 numerical", "SelectAggregate", False),  # no numerical sop to average
    # the sop has the Aggregate's encoding
    ("EOL v1 categorical Map x<3 tokens EOO v2 numerical Map x<3 tokens EOO EOL"
     " v3 categorical SelectAggregate EQ tokens tokens", "v2", False),
    ("EOL v1 categorical Map x<3 tokens EOO v2 numerical Map x<3 tokens EOO EOL"
     " v3 categorical SelectAggregate EQ tokens tokens", "v1", True),
    ("EOL v1 categorical Map x<3 tokens EOO v2 numerical Map x<3 tokens EOO EOL"
     " v3 numerical SelectAggregate EQ tokens tokens", "v2", True),
    ("EOL v1 categorical Map x<3 tokens EOO v2 numerical Map x<3 tokens EOO EOL"
     " v3 numerical SelectAggregate EQ tokens tokens", "v1", False),
    ("v1 categorical SelectAggregate EQ tokens tokens", "tokens", True),
    # kinds by half-layer
    ("", "EOL", True), ("v1 categorical", "Map", False),
    ("EOL v1 categorical", "SelectAggregate", False),
    ("EOL v1 categorical", "SelectorWidth", False),
    # layers as tracr allocates them
    ("EOL", "EOL", False),  # an empty layer
    ("EOL v1 categorical Map x+1 tokens EOO EOL EOL v2 categorical Map x+1", "tokens", False),
    ("EOL v1 categorical Map x+1 tokens EOO EOL EOL v2 categorical Map x+1", "v1", True),
    ("EOL v1 categorical Map x+1 tokens EOO EOL v2 categorical SelectorWidth EQ v1 v1 EOO EOL"
     " v3 categorical Map x+1", "tokens", False),  # depth 1 belongs in layer 0
    # SelectAggregate then an MLP op reading it: fused into one layer
    ("v1 categorical SelectAggregate EQ tokens tokens indices EOO EOL v2 categorical Map x+1",
     "v1", True),
    ("v1 categorical SelectAggregate EQ tokens tokens indices EOO EOL v2 categorical Map x+1",
     "tokens", True),
    ("v1 categorical SelectAggregate EQ tokens tokens indices EOO EOL v2 categorical Map x+1"
     " v1 EOO v3 categorical Map x+2", "tokens", False),
    ("v1 categorical SelectAggregate EQ tokens tokens indices EOO EOL v2 categorical Map x+1"
     " v1 EOO v3 categorical Map x+2", "v1", True),
    ("v1 categorical SelectAggregate EQ tokens tokens indices EOO EOL v2 categorical Map x+1"
     " v1 EOO v3 categorical Map", "x+1", False),  # would be v2 again
    # ... unless the MLP half-layer stays empty: then the next layer needs an attention op
    ("v1 categorical SelectAggregate EQ tokens tokens indices EOO EOL EOL", "EOL", False),
    ("v1 categorical SelectAggregate EQ tokens tokens indices EOO EOL EOL", "EOS", True),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO EOL EOL", "EOL", True),
    # canonical order inside a half-layer, no duplicates, commutative args sorted
    ("v1 categorical SelectorWidth EQ tokens tokens EOO v2 categorical", "SelectAggregate", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO v2 categorical SelectorWidth", "EQ", True),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO v2 categorical SelectorWidth EQ tokens",
     "tokens", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO v2 categorical SelectorWidth EQ tokens",
     "indices", True),
    ("v1 numerical SelectorWidth EQ tokens tokens EOO v2", "categorical", False),
    ("EOL v1 categorical SequenceMap x+y indices", "tokens", False),
    ("EOL v1 categorical SequenceMap x-y indices", "tokens", True),
    # the end: only after a complete layer, everything consumed, tokens read
    ("v1 categorical SelectorWidth EQ tokens tokens EOO", "EOS", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO EOL", "EOS", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO EOL EOL", "EOS", True),
    ("v1 categorical SelectorWidth EQ indices indices EOO EOL EOL", "EOS", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO v2 categorical SelectorWidth EQ tokens"
     " indices EOO EOL EOL", "EOS", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO EOL EOL EOS", "PAD", True),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO EOL EOL EOS", "EOL", False),
    ("v1 categorical SelectorWidth EQ tokens tokens EOO EOL EOL EOS PAD", "PAD", True),
])
def test_rules(plain, prefix, token, ok):
    assert allows(plain, prefix, token) is ok


def test_no_op_that_cannot_be_finished_in_time():
    vocab = Vocab(L.Tables(CONSTANTS), 2)
    g = Grammar(vocab)
    # v1 reads indices: v2 is the last op, so it must read both v1 and tokens.
    prefix = "EOL v1 categorical Map x+1 indices EOO"
    assert not allows(g, prefix, "v2")  # it could not read v1 in v1's half-layer
    assert allows(g, prefix, "EOL")
    assert allows(g, prefix + " EOL v2 categorical SelectorWidth EQ v1", "tokens")
    assert not allows(g, prefix + " EOL v2 categorical SelectorWidth EQ v1", "v1")
    assert not allows(g, prefix + " EOL v2 categorical SelectAggregate EQ v1 indices", "v1")
    assert allows(g, prefix + " EOL v2 categorical SelectAggregate EQ v1 indices", "tokens")
    # three dangling ops cannot be joined by one more op... unless by a SelectAggregate
    g3 = Grammar(Vocab(L.Tables(CONSTANTS), 4))
    three = ("EOL v1 categorical Map x+1 tokens EOO v2 categorical Map x+2 tokens EOO"
             " v3 categorical Map x+3 tokens EOO EOL")
    assert allows(g3, three, "v4")
    assert not allows(g3, three + " v4 categorical", "SelectorWidth")
    assert allows(g3, three + " v4 categorical", "SelectAggregate")
    assert not allows(g3, three + " v4 categorical SelectAggregate EQ", "tokens")
    assert not allows(g3, three + " v4 categorical SelectAggregate EQ v1 v2", "indices")
    assert allows(g3, three + " v4 categorical SelectAggregate EQ v1 v2", "v3")


def test_value_sets_restrict_numerical_aggregates(plain, valued):
    prefix = "EOL v1 numerical Map x+1 tokens EOO v2 numerical Map x<3 tokens EOO EOL" \
             " v3 numerical SelectAggregate EQ tokens tokens"
    assert allows(plain, prefix, "v1") and allows(plain, prefix, "v2")
    assert not allows(valued, prefix, "v1")  # values 2..4: tracr averages only 0/1
    assert allows(valued, prefix, "v2")  # a bool


# ---------------------------------------------------------------------------
# API


def test_state_batch_and_errors(plain, vocab):
    rng = np.random.default_rng(3)
    seqs = [rollout(plain, rng) for _ in range(8)]
    T = max(map(len, seqs))
    batch = np.zeros((len(seqs), T), dtype=np.int64)  # PAD = 0
    for b, s in enumerate(seqs):
        batch[b, :len(s)] = s
    for t in range(1, T + 1):
        lengths = [min(t, len(s)) for s in seqs]
        masks = plain.allowed_batch(batch, lengths)
        assert masks.shape == (len(seqs), len(vocab))
        for b, s in enumerate(seqs):
            assert (masks[b] == plain.allowed(s[:lengths[b]])).all()
            assert (masks[b] == plain.state(s[:lengths[b]]).allowed()).all()
    full = plain.allowed_batch(batch)  # whole rows: finished, PAD only
    assert (full[:, plain.PAD]).all() and full.sum() == len(seqs)
    assert vocab.index["PAD"] == 0
    # a prefix that breaks the rules (a dead beam) has no continuation
    for bad in (["BOS", "v2"], ["v1"], ["BOS", "EOL", "EOL", "v1"]):
        assert not plain.allowed(vocab.ids(bad)).any()
        assert not plain.is_complete(vocab.ids(bad))
        with pytest.raises(GrammarError):
            plain.state(vocab.ids(bad))
    st = plain.start()
    with pytest.raises(GrammarError):
        st.advance(vocab.index["EOS"])
    assert not plain.is_complete([plain.BOS])
