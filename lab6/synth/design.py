"""The label-set design of a synthetic dataset: held-out object pairs, the training scenes' label sets and the
three test sets (test: like training; new_test: binding-heavy; unseen_test: pairs training never shows)."""
from __future__ import annotations

import itertools

import numpy as np

from .. import labels as L
from ..errors import LabelError
from .scene import S_TESTS, scene_rng

TEST_SETS = 32  # label sets per test file


def object_pairs(labels) -> set[frozenset[str]]:
    """Every unordered pair of objects in a label set."""
    return {frozenset(p) for p in itertools.combinations(labels, 2)}


def sample_held_out(seed: int) -> tuple[list[list[str]], set[frozenset[str]]]:
    """The unseen test sets and the object pairs training must never show together.

    16 objects are split into 4 groups of 4; every pair inside a group is held out of training, and the
    unseen sets are all 16 triples plus 16 of the 24 pairs inside the groups (so none of their pairs is seen).
    """
    rng = scene_rng(seed, S_TESTS, 0)
    chosen = [L.OBJECTS[i] for i in rng.permutation(len(L.OBJECTS))[:16]]
    groups = [chosen[4 * g:4 * g + 4] for g in range(4)]
    held = set().union(*(object_pairs(g) for g in groups))
    triples = [list(c) for g in groups for c in itertools.combinations(g, 3)]
    pairs = [list(c) for g in groups for c in itertools.combinations(g, 2)]
    pick = rng.permutation(len(pairs))[:TEST_SETS - len(triples)]
    sets = triples + [pairs[i] for i in sorted(pick)]
    order = rng.permutation(len(sets))
    return [[str(x) for x in rng.permutation(sets[i])] for i in order], held


def sample_train_labels(rng: np.random.Generator, n: int, held: set[frozenset[str]]) -> list[str]:
    """n distinct objects drawn uniformly one at a time, never completing a held-out pair."""
    out: list[str] = []
    for _ in range(n):
        allowed = [o for o in L.OBJECTS if o not in out and all(frozenset((o, p)) not in held for p in out)]
        out.append(allowed[int(rng.integers(len(allowed)))])
    return out


def sample_test(seed: int, held: set[frozenset[str]]) -> list[list[str]]:
    """32 distinct label sets drawn like the training scenes, 1-3 objects each."""
    rng = scene_rng(seed, S_TESTS, 1)
    out, seen = [], set()
    while len(out) < TEST_SETS:
        labels = sample_train_labels(rng, int(rng.integers(1, L.MAX_OBJECTS + 1)), held)
        if frozenset(labels) not in seen:
            seen.add(frozenset(labels))
            out.append(labels)
    return out


BINDING_PATTERNS = (("two-two", 12), ("colour-in-3-shapes", 4), ("shape-in-3-colours", 4),
                     ("colour-in-2-shapes", 8), ("shape-in-2-colours", 4))


def binding_set(rng: np.random.Generator, kind: str) -> list[str]:
    """One label set of a binding pattern, e.g. 'two-two' = {c1 s1, c2 s1, c1 s2}."""
    c = [str(x) for x in rng.permutation(L.COLOURS)[:3]]
    s = [str(x) for x in rng.permutation(L.SHAPES)]
    if kind == "two-two":
        out = [f"{c[0]} {s[0]}", f"{c[1]} {s[0]}", f"{c[0]} {s[1]}"]
    elif kind == "colour-in-3-shapes":
        out = [f"{c[0]} {x}" for x in s]
    elif kind == "shape-in-3-colours":
        out = [f"{x} {s[0]}" for x in c]
    elif kind == "colour-in-2-shapes":
        out = [f"{c[0]} {s[0]}", f"{c[0]} {s[1]}"]
    else:
        out = [f"{c[0]} {s[0]}", f"{c[1]} {s[0]}"]
    return [out[i] for i in rng.permutation(len(out))]


def sample_binding_labels(rng: np.random.Generator, held: set[frozenset[str]],
                          avoid: set[frozenset[str]]) -> list[str]:
    """One binding-pattern label set (kinds weighed as in new_test) with no held-out pair, none of whose prefixes
    is a set in `avoid` (the test files' sets), so a test set is never a training image's label set."""
    kinds, weights = zip(*BINDING_PATTERNS)
    p = np.asarray(weights, dtype=float) / sum(weights)
    for _attempt in range(1000):
        labels = binding_set(rng, kinds[int(rng.choice(len(kinds), p=p))])
        if not (object_pairs(labels) & held) and all(frozenset(labels[:k]) not in avoid
                                                      for k in range(1, len(labels) + 1)):
            return labels
    raise RuntimeError("no binding label set left outside the held-out pairs and the test sets")


def sample_new_test(seed: int, held: set[frozenset[str]]) -> list[list[str]]:
    """32 binding-heavy label sets: colours repeated across shapes and shapes repeated across colours.

    Like the course's new_test: 20 triples (12 {c1 s1, c2 s1, c1 s2}, 4 one colour in three shapes,
    4 one shape in three colours) and 12 pairs (8 one colour in two shapes, 4 one shape in two colours).
    No set holds a held-out pair, so new_test isolates binding from unseen combinations.
    """
    rng = scene_rng(seed, S_TESTS, 2)
    out, seen = [], set()
    for kind, count in BINDING_PATTERNS:
        for _ in range(count):
            for _attempt in range(1000):
                labels = binding_set(rng, kind)
                if frozenset(labels) not in seen and not (object_pairs(labels) & held):
                    break
            else:
                raise RuntimeError(f"no new {kind} label set left; too many held-out pairs")
            seen.add(frozenset(labels))
            out.append(labels)
    return [out[i] for i in rng.permutation(len(out))]


def is_binding_heavy(labels: list[str]) -> bool:
    """True when two objects of the set share a colour or a shape."""
    colours = [n.split()[0] for n in labels]
    shapes = [n.split()[1] for n in labels]
    return len(labels) >= 2 and (len(set(colours)) < len(colours) or len(set(shapes)) < len(shapes))


def unseen_from_train(train_sets: list[list[str]], seed: int) -> tuple[list[list[str]], str]:
    """32 label sets not seen in `train_sets`, and the definition met: 'pairs' or 'triples'.

    'pairs': no two objects of a set ever appear together in one training set (used when enough such sets
    exist); otherwise 'triples': 3-object sets that are no training set (every pair may have been seen).
    """
    rng = scene_rng(seed, S_TESTS, 3)
    seen_pairs = set().union(*(object_pairs(s) for s in train_sets))
    seen_sets = {frozenset(s) for s in train_sets}
    strict = [list(c) for k in (3, 2) for c in itertools.combinations(L.OBJECTS, k) if not (object_pairs(c) & seen_pairs)]
    if len(strict) >= TEST_SETS:
        cands, how = strict, "pairs"
    else:
        cands = [list(c) for c in itertools.combinations(L.OBJECTS, 3) if frozenset(c) not in seen_sets]
        how = "triples"
        if len(cands) < TEST_SETS:
            raise LabelError(f"training label sets cover all but {len(cands)} triples; cannot draw "
                             f"{TEST_SETS} unseen test sets")
    pick = sorted(rng.permutation(len(cands))[:TEST_SETS])
    return [[str(x) for x in rng.permutation(cands[i])] for i in pick], how
