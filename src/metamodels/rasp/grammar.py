"""A grammar of canonical program token sequences, for constrained decoding.

:class:`Grammar` says, after any prefix, which tokens may come next, so that
decoding that only ever picks an allowed token (and stops at ``EOS``) writes a
well-formed program in exactly the form :func:`metamodels.rasp.tokenizer.encode`
writes it. The token language (see :mod:`metamodels.rasp.tokenizer`)::

    BOS  ( op* EOL )*  EOS  PAD*          op = NAME ENCODING KIND FN ARG... EOO

with one ``op* EOL`` group per half-layer, attention (even) and MLP (odd)
alternating, so the number of ``EOL`` is even.

Rules enforced, token by token
------------------------------
* Names: the k-th op is ``v{k}``; at most ``max_ops`` ops.
* Types (as :func:`metamodels.rasp.program.validate_structure`): ``Map`` any fn of
  the Map table, one argument, either encoding; ``SequenceMap`` categorical,
  two categorical arguments; ``LinearSequenceMap`` numerical, two numerical
  arguments; ``SelectAggregate`` (predicate; keys, queries categorical; sop of
  the op's own encoding); ``SelectorWidth`` (predicate; two categorical
  arguments; either encoding). Arguments are ``tokens``, ``indices`` or
  variables written before.
* Layers, as tracr allocates them (:func:`metamodels.rasp.program.layer_allocation`).
  Attention half-layers hold SelectAggregate / SelectorWidth, MLP half-layers
  Map / SequenceMap / LinearSequenceMap. Layer n (counting from 0) holds the
  ops of one computational depth d_n (longest path from an input): its
  attention ops have depth d_n, its MLP ops depth d_n, or d_n + 1 when tracr
  fuses depth d_n + 1 into this layer (all ops of depth d_n are
  SelectAggregates and all of depth d_n + 1 are MLP ops). d_0 = 1 and
  d_{n+1} = d_n + 2 after a fused layer, d_n + 1 otherwise. So an op is written
  exactly in the half-layer tracr gives it: its arguments sit in earlier
  half-layers, and no later op can change where it goes. Two consequences:
  every layer holds at least one op (an empty layer could never be followed),
  and after a layer of only SelectAggregates with an empty MLP half-layer the
  next layer needs an attention op (else tracr would fuse its MLP ops back).
* Canonical order (as :func:`metamodels.rasp.program.canonicalize`): inside a
  half-layer ops are strictly increasing in (kind, encoding, fn, argument
  ranks), ranks being tokens 0, indices 1, v1 2, ...; commutative
  SequenceMaps (``x+y``, ``x*y``, ``x!=y``, ``x==y``) list their arguments in
  rank order. Hence no two ops are identical.
* End: ``EOS`` only right after the ``EOL`` that closes an MLP half-layer,
  when every op but the last is an argument of a later op (the program is
  pruned: every op is an ancestor of the output, the last op) and some op
  reads ``tokens`` (tracr cannot compile a program without it). After ``EOS``
  only ``PAD``.
* No dead ends: a token is allowed only if the sequence can still be finished
  under all the rules within ``max_ops`` ops. This is decided exactly, by a
  memoised search over op-level states (variables' depth / encoding /
  consumed flag, the layer bookkeeping, the last op of the half-layer).

Guarantees
----------
For every sequence built by always choosing an allowed token until ``EOS``
(tests/test_grammar.py checks each on random rollouts, exhaustively for
``max_ops`` 1, and on every branch but the choice of fn for ``max_ops`` 2):

* the mask is never all False, and ``EOS`` comes within
  :meth:`Grammar.max_length` = ``2 + 10 * max_ops`` tokens (an op has at most
  8 tokens, each layer at least one op);
* ``tokenizer.decode`` succeeds, so ``validate_structure`` holds;
* ``encode(decode(seq)) == seq`` token for token: every op is in the
  half-layer ``layer_allocation`` gives it, the ``EOL`` count is that of
  ``num_layers``;
* every op is an ancestor of the output (the last op) and some op reads
  ``tokens``; ``program.to_rasp`` builds it;
* ``canonicalize(decode(seq))`` returns the program unchanged whenever it
  rewrites no fn (see below).

Conversely every canonical sequence (``encode`` of a program that
:func:`metamodels.rasp.program.canonicalize` returned, with at most ``max_ops`` ops
and reading ``tokens``; with value sets: whose numerical Aggregates average
0/1 values, as anything tracr compiles) is accepted token by token.

Value sets
----------
``Grammar(vocab)`` sees no values. ``Grammar(vocab, input_values,
max_seq_len)`` (or :meth:`Grammar.from_params`) also computes each written
op's value set as tracr does (``tokens`` = input_values, ``indices`` =
range(max_seq_len)) and allows a numerical SelectAggregate only over a
variable whose values ``int()`` maps into {0, 1}; without them about half of
random constrained programs fail tracr's basis inference on exactly that.
Not enforced in either mode, because the no-dead-end search would need the
value sets of ops not yet written: that each fn is the behaviour-class representative
``canonicalize`` would pick; that no op is constant or the identity (the
sampler's filters); and tracr's assembler limit, which rejects a program when
some categorical SelectAggregate has more values than the model's key size,
the largest ``max(|values(keys)| + 1, |values(queries)| + 2)`` over all its
attention ops (``compiler.compile_program`` raises ``ValueError: ... value
size``; about 0.7% of random constrained programs with the default params).

API
---
``g = Grammar(vocab)`` or ``Grammar(vocab, input_values, max_seq_len)`` or
``Grammar.from_params(params)``; ``g.allowed(prefix_ids)`` -> read-only bool
mask (len(vocab),), all False for a prefix that already breaks the rules (a
dead beam); ``g.allowed_batch(prefixes (B, T), lengths)`` -> (B, V);
``g.is_complete(prefix_ids)``; ``g.max_length()``. Incrementally:
``st = g.start()`` (after BOS), ``st.allowed()``, ``st.advance(token_id)``
(GrammarError if masked), ``st.done``, ``st.copy()``; ``g.state(prefix_ids)``.

Cost: masks are memoised by state; a call costs about 0.05 ms along
dataset-like sequences and 0.1-0.3 ms on random rollouts (max_ops 6), a few
tens of ms for the first calls of a fresh grammar.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

from metamodels.rasp import lambdas as L
from metamodels.rasp.program import ARITY, CAT, KINDS, NUM, Op, op_value_set
from metamodels.rasp.tokenizer import BOS, EOL, EOO, EOS, KIND_TOKENS, PAD, Vocab

__all__ = ["Grammar", "GrammarError", "State"]

# Op kinds and encodings as small ints (KINDS order, which is also the
# canonical sort order of kinds).
MAP, SEQ, LIN, AGG, SW = (KINDS.index(k) for k in
                          ("Map", "SequenceMap", "LinearSequenceMap", "Aggregate",
                           "SelectorWidth"))
_CAT, _NUM = 0, 1
_ENC = (CAT, NUM)
_ATTN_KINDS = (AGG, SW)
_MLP_KINDS = (MAP, SEQ, LIN)
_ARITY = tuple(ARITY[k] for k in KINDS)
# A-state of the current layer's attention half-layer.
_A_EMPTY, _A_AGG, _A_SW = 0, 1, 2
# Map families whose output is a bool whatever the input (0/1 for tracr).
_BOOL_FAMILIES = frozenset({"lt", "le", "gt", "ge", "ne", "eq", "not"})


class GrammarError(ValueError):
    """A token that the grammar does not allow after the prefix."""


class _Core(NamedTuple):
    """Everything about a prefix that matters for its future, at an op boundary.

    vars: (depth, encoding, binary) per variable, ranks 0 tokens, 1 indices,
    2 v1, ...; binary: numerical with 0/1 values (only tracked with value sets).
    dangling: bitmask of ops no later op reads yet. D: target depth of the
    current layer; half: 0 attention, 1 MLP; a_state: what the attention
    half-layer holds; m_mode: -1 no MLP op yet, else MLP depth - D;
    need_attn: this layer must have an attention op; last: sort key of the
    last op in this half-layer.
    """

    vars: tuple
    dangling: int
    tok_used: bool
    D: int
    half: int
    a_state: int
    m_mode: int
    need_attn: bool
    last: tuple | None


_START = _Core(vars=((0, _CAT, False), (0, _CAT, False)), dangling=0, tok_used=False, D=1,
               half=0, a_state=_A_EMPTY, m_mode=-1, need_attn=False, last=None)


def _popcount(x: int) -> int:
    return x.bit_count()


def _eos_ok(c: _Core) -> bool:
    n = len(c.vars)
    return (c.half == 0 and c.a_state == _A_EMPTY and n > 2 and c.tok_used
            and c.dangling == 1 << (n - 1))


def _after_eol(c: _Core) -> _Core | None:
    if c.half == 0:
        if c.a_state == _A_EMPTY and c.need_attn:
            return None
        return c._replace(half=1, m_mode=-1, last=None)
    if c.a_state == _A_EMPTY and c.m_mode < 0:
        return None  # an empty layer: nothing could ever follow it
    return c._replace(D=c.D + (2 if c.m_mode == 1 else 1), half=0, a_state=_A_EMPTY,
                      m_mode=-1, need_attn=(c.a_state == _A_AGG and c.m_mode < 0),
                      last=None)


def _kinds(c: _Core) -> tuple:
    return _ATTN_KINDS if c.half == 0 else _MLP_KINDS


def _encodings(kind: int) -> tuple:
    if kind == SEQ:
        return (_CAT,)
    if kind == LIN:
        return (_NUM,)
    return (_CAT, _NUM)


def _targets(c: _Core, kind: int) -> tuple:
    """Depths an op of `kind` may have in the current half-layer."""
    if c.half == 0:
        return (c.D,) if kind in _ATTN_KINDS else ()
    if kind in _ATTN_KINDS:
        return ()
    if c.m_mode >= 0:
        return (c.D + c.m_mode,)
    return (c.D, c.D + 1) if c.a_state == _A_AGG else (c.D,)


def _kind_enc_ok(c: _Core, kind: int, enc: int) -> bool:
    if kind not in _kinds(c) or enc not in _encodings(kind):
        return False
    return c.last is None or (kind, enc) >= c.last[:2]


def _arg_ok(c: _Core, kind: int, enc: int, pos: int, a: int, check_binary: bool) -> bool:
    _, ae, binary = c.vars[a]
    if kind == SEQ or (kind in _ATTN_KINDS and pos < 2):
        return ae == _CAT
    if kind == LIN:
        return ae == _NUM
    if kind == AGG:  # the sop
        return ae == enc and (enc == _CAT or binary or not check_binary)
    return True  # Map


def _apply(c: _Core, kind: int, enc: int, fn_rank: int, args: tuple, binary: bool) -> _Core:
    depth = 1 + max(c.vars[a][0] for a in args)
    dangling = c.dangling
    for a in args:
        dangling &= ~(1 << a)
    dangling |= 1 << len(c.vars)
    if c.half == 0:
        a_state = _A_SW if (kind == SW or c.a_state == _A_SW) else _A_AGG
        m_mode = c.m_mode
    else:
        a_state = c.a_state
        m_mode = depth - c.D
    return c._replace(vars=c.vars + ((depth, enc, binary),), dangling=dangling,
                      tok_used=c.tok_used or 0 in args, a_state=a_state, m_mode=m_mode,
                      last=(kind, enc, fn_rank, args))


def _lower_bound(c: _Core) -> int:
    """Ops still needed at least: each op leaves at most 2 fewer dangling ops."""
    d = _popcount(c.dangling)
    lb = 1 if len(c.vars) == 2 else d // 2  # ceil((d - 1) / 2)
    if not c.tok_used or (c.half == 1 and c.a_state == _A_EMPTY and c.m_mode < 0):
        lb = max(lb, 1)
    return lb


class Grammar:
    """Next-token masks for canonical program token sequences (numpy only).

    ``Grammar(vocab)`` checks structure only. ``Grammar(vocab, input_values,
    max_seq_len)`` also tracks value sets (of ``tokens`` = `input_values`,
    ``indices`` = range(max_seq_len)) and allows a numerical SelectAggregate
    only over 0/1 values, as tracr requires.
    """

    def __init__(self, vocab: Vocab, input_values: Iterable | None = None,
                 max_seq_len: int | None = None):
        if (input_values is None) != (max_seq_len is None):
            raise ValueError("give both input_values and max_seq_len, or neither")
        self.vocab = vocab
        self.tables: L.Tables = vocab.tables
        self.max_ops = vocab.max_ops
        self.size = len(vocab)
        self.values = input_values is not None
        self.max_seq_len = max_seq_len
        self.input_values = frozenset(input_values) if self.values else None
        ix = vocab.index
        self.PAD, self.BOS, self.EOS, self.EOO, self.EOL = (
            ix[t] for t in (PAD, BOS, EOS, EOO, EOL))
        self.enc_id = tuple(ix[e] for e in _ENC)
        self.kind_id = tuple(ix[KIND_TOKENS[k]] for k in KINDS)
        self.var_id = (ix["tokens"], ix["indices"]) + tuple(ix[v] for v in vocab.variables)
        self.var_of_id = {t: i for i, t in enumerate(self.var_id)}
        # fn tokens per kind, sorted as canonicalize sorts them (by string).
        fns = {MAP: [m.token for m in self.tables.maps],
               SEQ: [s.token for s in self.tables.sequence_maps],
               LIN: [s.token for s in self.tables.linear],
               AGG: list(L.PREDICATES), SW: list(L.PREDICATES)}
        self.fns = {k: tuple(sorted(v)) for k, v in fns.items()}
        self.fn_ids = {k: tuple(ix[t] for t in v) for k, v in self.fns.items()}
        self.fn_rank_of_id = {k: {t: r for r, t in enumerate(v)} for k, v in self.fn_ids.items()}
        self.commutative = tuple(self.tables.sequence_map_by_token[t].commutative
                                 for t in self.fns[SEQ])
        self.noncomm_ranks = tuple(r for r, c in enumerate(self.commutative) if not c)
        self.bool_map_ranks = tuple(r for r, t in enumerate(self.fns[MAP])
                                    if self.tables.map_by_token[t].family in _BOOL_FAMILIES)
        self._feasible_memo: dict = {}
        self._mask_memo: dict = {}
        self._prefix_memo: dict = {}
        self._values_memo: dict = {}
        self._cands_memo: dict = {}
        self._none = np.zeros(self.size, dtype=bool)
        self._none.setflags(write=False)

    @classmethod
    def from_params(cls, params, values: bool = True) -> "Grammar":
        """The grammar of ``params.yaml``'s vocabulary (value sets of its zoo domain)."""
        vocab = Vocab.from_params(params)
        if not values:
            return cls(vocab)
        return cls(vocab, params["zoo"]["vocab"], params["zoo"]["max_seq_len"])

    # -- public API --------------------------------------------------------
    def start(self) -> "State":
        """The state after ``BOS``."""
        vs = None
        if self.values:
            vs = (self.input_values, frozenset(range(self.max_seq_len)))
        return State(self, _START, None, False, vs)

    def state(self, prefix_ids: Sequence[int]) -> "State":
        """The state after a prefix (starting with BOS); GrammarError if it breaks a rule."""
        return self._state(tuple(int(t) for t in prefix_ids)).copy()

    def _state(self, key: tuple) -> "State":
        """Memoised prefix states (shared: callers must not advance them)."""
        memo = self._prefix_memo
        st = memo.get(key)
        if st is not None:
            return st
        if not key or key[0] != self.BOS:
            raise GrammarError("a prefix starts with BOS")
        if len(key) == 1:
            st = memo[key] = self.start()
            return st
        i = len(key) - 1
        while i > 1 and key[:i] not in memo:
            i -= 1
        st = memo.get(key[:i]) or self.start()
        if len(memo) > 200_000:
            memo.clear()
        for j in range(i, len(key)):
            st = st.copy().advance(key[j])
            memo[key[:j + 1]] = st
        return st

    def allowed(self, prefix_ids: Sequence[int]) -> np.ndarray:
        """Read-only bool mask (len(vocab),) of the tokens that may follow the prefix.

        All False for a prefix that breaks the rules (no continuation can fix
        it), e.g. a dead beam holding a masked token; :meth:`state` raises
        GrammarError on such a prefix instead. Never all False for a prefix
        built by following the masks.
        """
        try:
            return self._state(tuple(int(t) for t in prefix_ids)).allowed()
        except GrammarError:
            return self._none

    def allowed_batch(self, prefixes: np.ndarray, lengths: Sequence[int] | None = None
                      ) -> np.ndarray:
        """Masks (B, V) for prefixes (B, T), row b being prefixes[b, :lengths[b]]."""
        prefixes = np.asarray(prefixes)
        if lengths is None:
            lengths = [prefixes.shape[1]] * prefixes.shape[0]
        out = np.zeros((prefixes.shape[0], self.size), dtype=bool)
        for b, n in enumerate(lengths):
            out[b] = self.allowed(prefixes[b, :int(n)])
        return out

    def is_complete(self, prefix_ids: Sequence[int]) -> bool:
        """True if the prefix is a finished valid sequence (EOS, then only PAD)."""
        try:
            return self._state(tuple(int(t) for t in prefix_ids)).done
        except GrammarError:
            return False

    def max_length(self) -> int:
        """No sequence following the masks is longer (BOS and EOS included)."""
        return 2 + 10 * self.max_ops

    # -- feasibility (can this op-boundary state still reach EOS?) ----------
    def _feasible(self, c: _Core) -> bool:
        r = self._feasible_memo.get(c)
        if r is None:
            if len(self._feasible_memo) > 1_000_000:
                self._feasible_memo.clear()
            r = self._feasible_memo[c] = self._search(c)
        return r

    def _search(self, c: _Core) -> bool:
        if _eos_ok(c):
            return True
        budget = self.max_ops - (len(c.vars) - 2)
        if _lower_bound(c) > budget:
            return False
        # Closing the half-layer first: its state forgets the last op, so it
        # is shared by many prefixes and usually already known.
        nxt = _after_eol(c)
        if nxt is not None and self._feasible(nxt):
            return True
        if budget == 0:
            return False
        need = max(0, _popcount(c.dangling) - 2 * (budget - 1))  # dangling the op must read
        for kind in _kinds(c):
            for enc in _encodings(kind):
                if not _kind_enc_ok(c, kind, enc):
                    continue
                for args in self._arg_tuples(c, kind, enc, (), need):
                    for rank, binary in self._dfs_fns(c, kind, enc, args):
                        if self._feasible(_apply(c, kind, enc, rank, args, binary)):
                            return True
        return False

    def _arg_tuples(self, c: _Core, kind: int, enc: int, prefix: tuple, need: int = 0):
        """Complete, well-typed argument tuples extending `prefix` whose op has a
        depth allowed here and reads at least `need` dangling ops."""
        targets = _targets(c, kind)
        if not targets:
            return
        hi = max(targets) - 1  # no argument deeper than this,
        lo = min(targets) - 1  # and some argument at least this deep
        vars_ = c.vars
        key = (vars_, kind, enc, hi)
        cands = self._cands_memo.get(key)
        if cands is None:
            if len(self._cands_memo) > 200_000:
                self._cands_memo.clear()
            cands = self._cands_memo[key] = [
                [a for a in range(len(vars_))
                 if vars_[a][0] <= hi and _arg_ok(c, kind, enc, pos, a, self.values)]
                for pos in range(_ARITY[kind])]
        if prefix:
            cands = [[a] if a in cs else [] for a, cs in zip(prefix, cands)] + cands[len(prefix):]
        if not all(cands):
            return
        deep = sum(1 << a for a in range(len(vars_)) if vars_[a][0] >= lo)
        dangling = c.dangling
        if len(cands) == 1:
            for a in cands[0]:
                m = 1 << a
                if m & deep and (m & dangling).bit_count() >= need:
                    yield (a,)
        elif len(cands) == 2:
            for a in cands[0]:
                for b in cands[1]:
                    m = (1 << a) | (1 << b)
                    if m & deep and (m & dangling).bit_count() >= need:
                        yield (a, b)
        else:
            for a in cands[0]:
                for b in cands[1]:
                    mab = (1 << a) | (1 << b)
                    for x in cands[2]:
                        m = mab | (1 << x)
                        if m & deep and (m & dangling).bit_count() >= need:
                            yield (a, b, x)

    def _fn_ranks(self, c: _Core, kind: int, enc: int, args: tuple) -> list:
        """Fn ranks allowed for a complete op by the canonical order and commutativity."""
        n = len(self.fns[kind])
        if kind == SEQ and args[0] > args[1]:
            ranks = self.noncomm_ranks
        else:
            ranks = range(n)
        last = c.last
        if last is None or (kind, enc) > last[:2]:
            return list(ranks)
        # same kind and encoding as the last op (smaller is excluded earlier)
        lo = last[2] if args > last[3] else last[2] + 1
        return [r for r in ranks if r >= lo]

    def _dfs_fns(self, c: _Core, kind: int, enc: int, args: tuple):
        """(fn rank, binary) choices the search tries: the smallest fn, and the
        smallest bool-valued one where that makes a numerical Map binary."""
        ranks = self._fn_ranks(c, kind, enc, args)
        if not ranks:
            return ()
        if not self.values or enc != _NUM:
            return ((ranks[0], False),)
        if kind == AGG:
            return ((ranks[0], True),)
        if kind == MAP:
            out = [(ranks[0], False)]
            bools = [r for r in ranks if r in self.bool_map_ranks]
            if bools:
                out.append((bools[0], True))
            return out
        return ((ranks[0], False),)

    # -- masks ---------------------------------------------------------------
    def _op_feasible(self, st: "State", kind: int, enc: int, rank: int, args: tuple) -> bool:
        return self._feasible(_apply(st.core, kind, enc, rank, args,
                                     st.binary_of(kind, enc, rank, args)))

    def _exists(self, st: "State", partial: tuple) -> bool:
        """Whether an op starting with `partial` (enc, kind, fn rank, args...) can be
        completed into one after which the sequence can still end."""
        c = st.core
        if len(partial) == 0:
            return any(self._exists(st, (e,)) for e in (_CAT, _NUM))
        enc = partial[0]
        if len(partial) == 1:
            return any(self._exists(st, (enc, k)) for k in _kinds(c) if _kind_enc_ok(c, k, enc))
        kind = partial[1]
        if len(partial) == 2:
            for args in self._arg_tuples(c, kind, enc, ()):
                ranks = self._fn_ranks(c, kind, enc, args)
                if self.values and enc == _NUM and kind in (MAP, LIN):
                    if any(self._op_feasible(st, kind, enc, r, args) for r in ranks):
                        return True
                elif ranks and self._op_feasible(st, kind, enc, ranks[0], args):
                    return True  # feasibility only falls as the fn rank rises
            return False
        rank = partial[2]
        for args in self._arg_tuples(c, kind, enc, partial[3:]):
            if rank in self._fn_ranks(c, kind, enc, args) and self._op_feasible(
                    st, kind, enc, rank, args):
                return True
        return False

    def _mask(self, st: "State") -> np.ndarray:
        key = (st.core, st.partial, st.done, st.vs_key())
        m = self._mask_memo.get(key)
        if m is not None:
            return m
        m = np.zeros(self.size, dtype=bool)
        c, p = st.core, st.partial
        if st.done:
            m[self.PAD] = True
        elif p is None:
            k = len(c.vars) - 2
            if k < self.max_ops and self._exists(st, ()):
                m[self.var_id[k + 2]] = True
            nxt = _after_eol(c)
            if nxt is not None and self._feasible(nxt):
                m[self.EOL] = True
            if _eos_ok(c):
                m[self.EOS] = True
        elif len(p) == 0:
            for e in (_CAT, _NUM):
                m[self.enc_id[e]] = self._exists(st, (e,))
        elif len(p) == 1:
            for k in _kinds(c):
                if _kind_enc_ok(c, k, p[0]):
                    m[self.kind_id[k]] = self._exists(st, (p[0], k))
        elif len(p) == 2:
            for r in self._allowed_fn_ranks(st, p[0], p[1]):
                m[self.fn_ids[p[1]][r]] = True
        elif len(p) - 3 < _ARITY[p[1]]:
            for a in range(len(c.vars)):
                if self._exists(st, p + (a,)):
                    m[self.var_id[a]] = True
        else:
            m[self.EOO] = True
        m.setflags(write=False)
        if len(self._mask_memo) > 200_000:
            self._mask_memo.clear()
        self._mask_memo[key] = m
        return m

    def _allowed_fn_ranks(self, st: "State", enc: int, kind: int) -> set:
        c = st.core
        n = len(self.fns[kind])
        out: set = set()
        exact = self.values and enc == _NUM and kind in (MAP, LIN)
        for args in self._arg_tuples(c, kind, enc, ()):
            ranks = [r for r in self._fn_ranks(c, kind, enc, args) if r not in out]
            if not ranks:
                continue
            if exact:  # binary output depends on the fn itself
                out.update(r for r in ranks if self._op_feasible(st, kind, enc, r, args))
            elif self._op_feasible(st, kind, enc, ranks[-1], args):
                out.update(ranks)
            elif self._op_feasible(st, kind, enc, ranks[0], args):
                lo, hi = 0, len(ranks) - 1  # ranks[lo] feasible, ranks[hi] not
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if self._op_feasible(st, kind, enc, ranks[mid], args):
                        lo = mid
                    else:
                        hi = mid
                out.update(ranks[:lo + 1])
            if len(out) == n:
                break
        return out


class State:
    """Incremental grammar state after a prefix; ``advance`` one token at a time.

    ``done`` is True once EOS was consumed. States are cheap to ``copy`` (for
    beams); ``allowed()`` is memoised in the grammar.
    """

    __slots__ = ("g", "core", "partial", "done", "vs")

    def __init__(self, g: Grammar, core: _Core, partial, done: bool, vs):
        self.g = g
        self.core = core
        self.partial = partial  # None at an op boundary, else (enc, kind, fn rank, args...)
        self.done = done
        self.vs = vs  # value sets per variable (with input values), else None

    def copy(self) -> "State":
        return State(self.g, self.core, self.partial, self.done, self.vs)

    def vs_key(self):
        return self.vs if self.g.values else None

    def allowed(self) -> np.ndarray:
        """Read-only bool mask over the vocabulary."""
        return self.g._mask(self)

    def binary_of(self, kind: int, enc: int, rank: int, args: tuple) -> bool:
        """Whether the op's values are 0/1 for tracr (only tracked with value sets)."""
        if not self.g.values or enc != _NUM:
            return False
        if kind == AGG:
            return True  # an average of 0/1 values, which int() maps to 0/1
        return {int(x) for x in self._values(kind, enc, rank, args)} <= {0, 1}

    def _values(self, kind: int, enc: int, rank: int, args: tuple) -> frozenset:
        g = self.g
        key = (kind, enc, rank) + tuple(self.vs[a] for a in args)
        out = g._values_memo.get(key)
        if out is None:
            names = tuple(f"x{i}" for i in range(len(args)))
            op = Op("new", KINDS[kind], g.fns[kind][rank], names, _ENC[enc])
            out = frozenset(op_value_set(op, dict(zip(names, key[3:])), g.tables,
                                         g.max_seq_len))
            if len(g._values_memo) > 200_000:
                g._values_memo.clear()
            g._values_memo[key] = out
        return out

    def advance(self, token_id: int) -> "State":
        """Consume one token (GrammarError if not allowed); returns self."""
        t = int(token_id)
        if not (0 <= t < self.g.size) or not self.allowed()[t]:
            raise GrammarError(f"token {self.g.vocab.tokens[t] if 0 <= t < self.g.size else t!r}"
                               " is not allowed here")
        g, c, p = self.g, self.core, self.partial
        if self.done:
            return self
        if p is None:
            if t == g.EOS:
                self.done = True
            elif t == g.EOL:
                self.core = _after_eol(c)
            else:
                self.partial = ()
        elif len(p) == 0:
            self.partial = (g.enc_id.index(t),)
        elif len(p) == 1:
            self.partial = p + (g.kind_id.index(t),)
        elif len(p) == 2:
            self.partial = p + (g.fn_rank_of_id[p[1]][t],)
        elif t == g.EOO:
            enc, kind, rank = p[:3]
            args = p[3:]
            binary = self.binary_of(kind, enc, rank, args)
            if g.values:
                self.vs = self.vs + (self._values(kind, enc, rank, args),)
            self.core = _apply(c, kind, enc, rank, args, binary)
            self.partial = None
        else:
            self.partial = p + (g.var_of_id[t],)
        return self
