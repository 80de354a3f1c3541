"""``run_if``: a conditional that keeps the model's weights unbatched under ``vmap``.

``lax.cond`` with a predicate that ``vmap`` batches (one per prompt in the batch path: "this prompt
resamples now", LLaDA2's extra block for a prompt's tail) becomes both branches and a select, and
its batching rule first broadcasts EVERY operand along the batch axis, the values the branches
close over included, and selects each of them once per branch. The sampler's branches close over
the model's weights, so a batch of B prompts held about 2 B copies of them: on a 2-layer
LLaDA2.0-mini-shaped model (5.6 GiB of float32 weights) the batch path's temporaries were 40 GiB
for 4 prompts.

``run_if`` is ``lax.cond`` with its own batching rule (``jax.custom_batching.custom_vmap``): with
one predicate for the whole batch it stays a conditional; with a batched predicate it runs the
branch on every element (as ``lax.cond`` does then) and selects per element, leaving the unbatched
operands (the weights) unbatched, and skips the branch when no element takes it. That skip is a
reduction over the batch, so it is left out under a mesh with an axis other than "model" (which
may split the batch over devices: nothing then crosses them). It adds no loop. Differentiation
(a ``custom_jvp``) computes the branch on every element and selects, with zero tangents into
the branch where it is not taken, so that no cotangent reaches it (as ``lax.cond`` under ``vmap``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from .sharding import MODEL

__all__ = ["run_if"]


def _batch_is_local() -> bool:
    """True unless the context mesh (``jax.set_mesh``) has an axis of size > 1 other than "model":
    such an axis may split the batch over devices, and a reduction over the batch would then be a
    collective across them."""
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or all(size == 1 or name == MODEL for name, size in mesh.shape.items())


def run_if(pred: Any, fn: Callable[[Any], Any], operand: Any) -> Any:
    """``fn(operand)`` where ``pred`` (bool[]), else ``operand`` (``fn`` returns the operand's
    structure, shapes and dtypes)."""
    # every value fn closes over (the weights, traced indices) becomes an explicit argument, so that
    # the batching rule sees which of them are batched
    closed = jax.make_jaxpr(fn)(operand)
    tree = jax.tree.structure(operand)

    def branch(op, consts):
        return jax.tree.unflatten(tree, jax.core.eval_jaxpr(closed.jaxpr, consts, *jax.tree.leaves(op)))

    def plain(p, op, consts):
        return jax.lax.cond(p, branch, lambda o, _: o, op, consts)

    @jax.custom_batching.custom_vmap
    def batchable(p, op, consts):
        return plain(p, op, consts)

    @batchable.def_vmap
    def _rule(axis_size, in_batched, p, op, consts):
        p_b, op_b, c_b = in_batched
        axes = (jax.tree.map(lambda b: 0 if b else None, op_b), [0 if b else None for b in c_b])
        if not p_b:  # one decision for the whole batch: lax.cond's own rule keeps it a conditional
            out = jax.vmap(lambda o, c: plain(p, o, c), in_axes=axes)(op, consts)
        else:
            def whole(o, b):  # an operand leaf with the batch axis in front
                return o if b else jnp.broadcast_to(o, (axis_size,) + o.shape)

            def taken(_):
                new = jax.vmap(branch, in_axes=axes)(op, consts)
                return jax.tree.map(lambda x, o, b: jnp.where(p.reshape((axis_size,) + (1,) * (x.ndim - 1)), x,
                                                              whole(o, b)), new, op, op_b)

            if _batch_is_local():  # skip the branch when no element takes it (a reduction over the batch)
                # run_if again, not lax.cond: under an outer vmap jnp.any(p) is batched in its turn
                out = run_if(jnp.any(p), taken, jax.tree.map(whole, op, op_b))
            else:
                out = taken(None)
        return out, jax.tree.map(lambda _: True, out)

    @jax.custom_jvp
    def run(p, op, consts):
        return batchable(p, op, consts)

    @run.defjvp
    def _jvp(primals, tangents):
        # custom_vmap has no reverse mode, and lax.cond's jvp would broadcast the weights again under
        # vmap: the branch is linearised everywhere and its value and tangent selected. Where it is
        # not taken it gets zero tangents, so no cotangent flows through it (its derivatives may be
        # inf or NaN there, e.g. a resampling of degenerate weights that the predicate refused)
        p, op, consts = primals
        _, t_op, t_consts = tangents

        def pick(a, b):  # float0: the tangent of an integer value, nothing to select
            return a if a.dtype == jax.dtypes.float0 else jnp.where(p, a, b)

        zero_where_not_taken = jax.tree.map(lambda t: pick(t, jnp.zeros_like(t)), (t_op, t_consts))
        y, t_y = jax.jvp(branch, (op, consts), zero_where_not_taken)
        return jax.tree.map(pick, y, op), jax.tree.map(pick, t_y, t_op)

    return run(jnp.asarray(pred, bool), operand, list(closed.consts))
