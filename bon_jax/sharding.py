"""Device meshes, partition rules and sharded jitting on JAX's SPMD machinery.

Everything here is a thin layer over `jax.sharding` (`Mesh`, `NamedSharding`,
`PartitionSpec`), `jax.jit(in_shardings=, out_shardings=)` and
`jax.distributed`: XLA's SPMD partitioner inserts the collectives.

The mesh has three named axes, `AXES = ("data", "fsdp", "tensor")`, whose
sizes come from ``config.mesh.shape`` (one entry may be -1, "all remaining
devices"):

* ``data``: pure data parallelism. Parameters are replicated along it.
* ``fsdp``: fully sharded data parallelism. Batches are split along it too
  (`BATCH_AXES = ("data", "fsdp")`), and every weight matrix is split along
  one large axis, so a device holds 1/fsdp of the parameters and optimizer
  state, gathered by XLA when a layer needs them.
* ``tensor``: tensor (model) parallelism: attention heads, FFN hidden units
  and the vocabulary are split along it (Megatron-style).

Partition rules (`param_specs`) for the gemma `Transformer` (D = embed_dim,
V = vocab, N = query heads, K = key/value heads, H = head_dim, F = FFN hidden)::

  embedder/input_embedding   [V, D]        P("tensor", "fsdp")
  attn/q_einsum/w            [N, D, H]     P("tensor", "fsdp", None)
  attn/kv_einsum/w           [2, K, D, H]  P(None, "tensor", "fsdp", None)
  attn/qkv_einsum/w          [3, N, D, H]  P(None, "tensor", "fsdp", None)
  attn/attn_vec_einsum/w     [N, H, D]     P("tensor", None, "fsdp")
  mlp/gating_einsum          [2, D, F]     P(None, "fsdp", "tensor")
                             [2, F, D]     P(None, "tensor", "fsdp")  (transposed
                                           layout, Gemma 2 9B: F is the larger axis)
  mlp/linear                 [F, D]        P("tensor", "fsdp")
  */scale (RMSNorm), vectors, scalars      P()  replicated
  LoRA adapters (.../lora/*, a, b)         P()  replicated (rank-r, tiny)
  verifier head/kernel, head/bias          P()  replicated (D x 1)
  anything else with ndim >= 2             "fsdp" on its largest divisible axis

A mesh axis is only used on a dimension it divides: with the mesh shape known,
an axis of size m is dropped from a dimension of size s when s % m != 0 (then
"fsdp" moves to the largest other dimension it divides), and axes of size 1
are dropped (they split nothing). So every preset runs on every mesh, e.g.
``micro`` (K=2 kv heads) on (1, 1, 4) keeps its kv heads whole.

Optimizer state (`state_specs`): every leaf of the optax state whose tree path
ends with a parameter's path and has its shape (Adam's mu and nu, any
per-parameter trace) gets that parameter's spec; everything else (step
counts, schedules, scalars) is replicated.

Batches: the leading (prompt) dimension is split over `BATCH_AXES`. When it is
not divisible by data * fsdp, arrays of N samples per prompt ([B, N, ...])
split the sample dimension instead, so the N samples of a prompt may live on
different devices; otherwise the batch is replicated (`batch_spec_for`).

Example::

  mesh = sharding.make_mesh((2, 2, 2))
  state = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
  step = sharding.jit_sharded(step_fn, mesh, ("state", "batch"),
                              ("state", "replicated"), donate_argnums=0)
  sharding.per_device_bytes(models.abstract_params(model),
                            sharding.param_specs(abstract, (1, 8, 1)), (1, 8, 1))

Multi-host: `initialize_distributed(config)` starts `jax.distributed` (see
there for the environment variables); `process_rows` / `global_batch` build a
global batch from each process's slice, `to_host` gathers a sharded result to
every host.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

from bon_jax import config_lib
from bon_jax import gemma_internals

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

PyTree = Any
MeshShape = Any  # tuple[int, int, int] | Mesh | AbstractMesh | None


class MeshError(ValueError):
  """A mesh shape that cannot be built on the available devices."""


# ----------------------------------------------------------------------------
# Meshes.


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """Fills a -1 entry of a (data, fsdp, tensor) shape with the remaining devices.

  Example: ``resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)``.

  Raises:
    config_lib.UserError (one line) when the shape has the wrong length, more
    than one -1, non-positive entries, or does not use exactly `num_devices`.
  """
  shape = tuple(shape)
  if len(shape) != len(AXES) or not all(isinstance(s, (int, np.integer)) for s in shape):
    raise config_lib.UserError(
        f"config.mesh.shape must be 3 integers (data, fsdp, tensor), got {shape!r}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise config_lib.UserError(
        f"config.mesh.shape={shape} must hold positive sizes and at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise config_lib.UserError(
          f"config.mesh.shape={shape}: {num_devices} devices are not divisible by {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise config_lib.UserError(
        f"config.mesh.shape={shape} needs {math.prod(shape)} devices, but {num_devices} are"
        " available; make the product match (or use -1 for one axis)")
  return tuple(int(s) for s in shape)


# Sharding is propagated by XLA from the constraints bon_jax places (jax >= 0.8
# makes new meshes `Explicit`, which `with_sharding_constraint` rejects).
_AUTO = (AxisType.Auto,) * len(AXES)


def make_mesh(shape: Sequence[int], devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, fsdp, tensor) `Mesh` over `devices` (default: all, every process).

  `jax.make_mesh` orders the devices for the physical topology (ICI rings on
  TPU); the tensor axis is the fastest-varying one, i.e. the closest devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=_AUTO, devices=devices)


def mesh_from_config(config: Any, devices: Sequence[Any] | None = None) -> Mesh:
  """`make_mesh(config.mesh.shape)`; (-1, 1, 1) (data parallel) when absent."""
  shape = (-1, 1, 1)
  if "mesh" in config and "shape" in config.mesh:
    shape = tuple(config.mesh.shape)
  return make_mesh(shape, devices)


def mesh_for_run(config: Any) -> Mesh | None:
  """The run's mesh (`mesh_from_config`), or None when it has one device.

  None selects the drivers' unsharded code path: one device runs the same
  programs as before meshes existed (and shares their compilation caches).
  """
  mesh = mesh_from_config(config)
  return mesh if mesh.size > 1 else None


def abstract_mesh(shape: Sequence[int]) -> AbstractMesh:
  """An `AbstractMesh` of a full (data, fsdp, tensor) shape: no devices needed.

  For dry runs and capacity plans, e.g. ``abstract_mesh((1, 8, 1))`` for an
  8-chip host on a 1-CPU laptop.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(AXES) or any(s < 1 for s in shape):
    raise ValueError(f"an abstract mesh needs 3 positive sizes (data, fsdp, tensor), got {shape}")
  return AbstractMesh(shape, AXES, axis_types=_AUTO)


def _axis_sizes(mesh_shape: MeshShape) -> dict[str, int] | None:
  """{axis: size} of a mesh, an abstract mesh or a shape tuple; None = unknown."""
  if mesh_shape is None:
    return None
  if isinstance(mesh_shape, (Mesh, AbstractMesh)):
    return {a: int(mesh_shape.shape[a]) for a in AXES}
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(AXES) or any(s < 1 for s in shape):
    raise ValueError(f"mesh_shape must be 3 positive sizes (data, fsdp, tensor), got {shape}")
  return dict(zip(AXES, shape))


# ----------------------------------------------------------------------------
# Partition rules.


def _path_names(path) -> tuple[str, ...]:
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return tuple(names)


def _preferred(names: tuple[str, ...], shape: tuple[int, ...]) -> tuple[Any, ...] | None:
  """The rule's axis per dimension (before divisibility), None = replicate all."""
  ndim = len(shape)
  name = names[-1] if names else ""
  parent = names[-2] if len(names) > 1 else ""
  if "lora" in names or name in ("a", "b") or ndim <= 1 or "head" in names[:1]:
    return None
  if name == "input_embedding" and ndim == 2:
    return ("tensor", "fsdp")
  if parent == "q_einsum" and ndim == 3:
    return ("tensor", "fsdp", None)
  if parent in ("kv_einsum", "qkv_einsum") and ndim == 4:
    return (None, "tensor", "fsdp", None)
  if parent == "attn_vec_einsum" and ndim == 3:
    return ("tensor", None, "fsdp")
  if name == "gating_einsum" and ndim == 3:
    # [2, D, F] or the transposed [2, F, D]: F (hidden) is the larger axis.
    return (None, "fsdp", "tensor") if shape[2] >= shape[1] else (None, "tensor", "fsdp")
  if name == "linear" and ndim == 2:
    return ("tensor", "fsdp")
  # Unknown matrices: FSDP on the largest axis.
  out: list[Any] = [None] * ndim
  out[int(np.argmax(shape))] = "fsdp"
  return tuple(out)


def _spec_for(names: tuple[str, ...], shape: tuple[int, ...], sizes: dict[str, int] | None) -> P:
  pref = _preferred(names, shape)
  if pref is None:
    return P()
  out = list(pref)
  if sizes is not None:
    divides = lambda dim, axis: shape[dim] % sizes[axis] == 0
    for dim, axis in enumerate(out):
      # Size-1 axes split nothing: dropped, so FSDP may take their dimension.
      if axis is not None and (sizes[axis] == 1 or not divides(dim, axis)):
        out[dim] = None
    if "fsdp" in pref and "fsdp" not in out and sizes["fsdp"] > 1:
      # Move FSDP to the largest free dimension it divides.
      free = [d for d in np.argsort(shape, kind="stable")[::-1] if out[d] is None and divides(d, "fsdp")]
      if free:
        out[int(free[0])] = "fsdp"
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def param_specs(params: PyTree, mesh_shape: MeshShape = None) -> PyTree:
  """PartitionSpecs of parameters by the module docstring's rules.

  Args:
    params: gemma `Transformer` params, verifier params ``{"backbone",
      "head"}``, LoRA-wrapped params: arrays or `jax.ShapeDtypeStruct`s.
    mesh_shape: (data, fsdp, tensor) sizes, a `Mesh` or an `AbstractMesh`:
      axes that do not divide a dimension are dropped. None: no check.

  Returns:
    The same tree with a `PartitionSpec` per leaf.

  Example::

    specs = param_specs(models.abstract_params(model), (1, 8, 1))
    specs["layer_0"]["mlp"]["linear"]  # P(None, "fsdp") for F=9216 on tensor=1
  """
  sizes = _axis_sizes(mesh_shape)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: _spec_for(_path_names(path), tuple(np.shape(x)), sizes), params)


def state_specs(state: PyTree, mesh_shape: MeshShape = None) -> PyTree:
  """PartitionSpecs of a train state: params by `param_specs`, optax state mirroring them.

  Args:
    state: anything with a ``params`` attribute (`trainer_lib.TrainState`)
      whose other fields hold the optimizer state;
      or a bare params tree. Arrays or `jax.ShapeDtypeStruct`s.
    mesh_shape: as in `param_specs`.

  Returns:
    The same tree with a `PartitionSpec` per leaf: a leaf whose path ends with
    a parameter's path and whose shape equals it (Adam mu / nu) gets that
    parameter's spec, every other leaf (counts, step) `P()`.
  """
  params = getattr(state, "params", state)
  specs = param_specs(params, mesh_shape)
  table: dict[tuple[str, ...], tuple[tuple[int, ...], P]] = {}
  for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(specs)):
    table[_path_names(path)] = (tuple(np.shape(x)), spec)
  depths = sorted({len(k) for k in table})

  def lookup(path, x):
    names, shape = _path_names(path), tuple(np.shape(x))
    for d in depths:
      hit = table.get(names[-d:]) if len(names) >= d else None
      if hit is not None and hit[0] == shape:
        return hit[1]
    return P()

  return jax.tree_util.tree_map_with_path(lookup, state)


def batch_spec(ndim: int) -> P:
  """``P(("data", "fsdp"), None, ...)``: the leading dimension over `BATCH_AXES`."""
  if ndim < 1:
    raise ValueError(f"a batch needs a leading dimension, got ndim={ndim}")
  return P(BATCH_AXES, *([None] * (ndim - 1)))


def batch_spec_for(shape: Sequence[int], mesh_shape: MeshShape, *, groups: bool = False) -> P:
  """The spec of one batch array on a mesh.

  `BATCH_AXES` on the leading dimension if it divides it; with `groups`
  (arrays [B, N, ...] of N samples per prompt) else on the second, so the N
  samples of a prompt live on different devices; else replicated.
  """
  sizes = _axis_sizes(mesh_shape)
  n = math.prod(sizes[a] for a in BATCH_AXES) if sizes else 1
  shape = tuple(shape)
  if not shape:
    return P()
  if shape[0] % n == 0:
    return P(BATCH_AXES)
  if groups and len(shape) > 1 and shape[1] % n == 0:
    return P(None, BATCH_AXES)
  return P()


def named(mesh: Mesh, specs: PyTree) -> PyTree:
  """PartitionSpecs -> `NamedSharding`s on `mesh` (same tree)."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def per_device_bytes(abstract_tree: PyTree, specs: PyTree, mesh_shape: MeshShape) -> int:
  """The most bytes any one device holds of `abstract_tree` sharded by `specs`.

  A leaf of shape (s_1, ..., s_k) with spec entries covering mesh axes of
  total size m_i on dimension i is stored as blocks of ceil(s_i / m_i) per
  dimension; the device at mesh position (0, 0, 0) holds the first (largest)
  block of every leaf, so the maximum is the sum of those blocks.
  """
  sizes = _axis_sizes(mesh_shape)
  if sizes is None:
    raise ValueError("per_device_bytes needs the mesh shape")
  total = 0
  leaves = jax.tree.leaves(abstract_tree)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  if len(leaves) != len(spec_leaves):
    raise ValueError(f"{len(leaves)} arrays but {len(spec_leaves)} specs")
  for x, spec in zip(leaves, spec_leaves):
    shape = list(np.shape(x))
    for dim, entry in enumerate(tuple(spec)):
      axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
      m = math.prod(sizes[a] for a in axes)
      shape[dim] = -(-shape[dim] // m)
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return int(total)


# ----------------------------------------------------------------------------
# Placing data.


def _is_global(sharding: Any) -> bool:
  return not getattr(sharding, "is_fully_addressable", True)


def _shares_buffer(x: jax.Array, y: jax.Array) -> bool:
  ptrs = {(d.device, d.data.unsafe_buffer_pointer()) for d in x.addressable_shards}
  return any((d.device, d.data.unsafe_buffer_pointer()) in ptrs for d in y.addressable_shards)


def _put(x: Any, s: NamedSharding) -> jax.Array:
  """`x` (the same global value on every process) as an array with sharding `s`.

  Never aliases `x`'s buffers when it has to move it (so donating the result
  cannot invalidate `x`); an array already placed so is returned as is.
  """
  if isinstance(x, jax.Array) and x.sharding == s:
    return x
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data_spec = P(*tuple(s.spec), *([None] * (x.ndim + 1 - len(tuple(s.spec)))))
    data = _put(jax.random.key_data(x), NamedSharding(s.mesh, data_spec))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  if not _is_global(s):
    y = jax.device_put(x, s, may_alias=False)
    if isinstance(x, jax.Array) and _shares_buffer(x, y):
      # device_put keeps the source buffer as one replica of a replicated
      # result (may_alias notwithstanding); donating it would delete `x`.
      y = jax.device_put(np.array(x, copy=True), s)
    return y
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.jit(lambda a: a, out_shardings=s)(x)  # Reshard a global array.
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])


def shard(tree: PyTree, mesh: Mesh, specs: PyTree) -> PyTree:
  """`tree` placed on `mesh` by `specs` (a tree of PartitionSpecs, or one spec).

  Works on one or many processes; with many, every process must pass the
  same (global) values, as after a seeded init. The result never shares
  buffers with `tree` (safe to donate), except for arrays already placed so.
  """
  if isinstance(specs, P):
    specs = jax.tree.map(lambda _: specs, tree)
  return jax.tree.map(_put, tree, named(mesh, specs))


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The rows of a `[global_batch, ...]` batch this process loads.

  With the batch split over `BATCH_AXES`, a process's devices hold a
  contiguous block of rows (devices are ordered by process in the mesh);
  it encodes only those and `global_batch` assembles the global array.
  """
  sharding = NamedSharding(mesh, batch_spec_for((global_batch,), mesh))
  rows = set()
  for idx in sharding.addressable_devices_indices_map((global_batch,)).values():
    rows.update(range(*idx[0].indices(global_batch)))
  lo, hi = min(rows), max(rows) + 1
  if len(rows) != hi - lo:
    raise ValueError(f"process {jax.process_index()} holds non-contiguous rows of the batch")
  return slice(lo, hi)


def global_batch(local: PyTree, mesh: Mesh, global_batch_size: int) -> PyTree:
  """Assembles per-process slices (`process_rows`) into global batch arrays.

  `jax.make_array_from_process_local_data`: each process passes only its
  rows; the result is one `jax.Array` per leaf of leading size
  `global_batch_size`, split over `BATCH_AXES`.
  """

  def one(x):
    x = np.asarray(x)
    shape = (global_batch_size, *x.shape[1:])
    s = NamedSharding(mesh, batch_spec_for(shape, mesh))
    return jax.make_array_from_process_local_data(s, x, shape)

  return jax.tree.map(one, local)


def to_host(tree: PyTree) -> PyTree:
  """numpy copies of (possibly sharded, multi-process) arrays, on every host."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------
# Sharded jit.

KINDS = ("state", "params", "batch", "groups", "replicated")


def rows_constraint(mesh: Mesh | None, rows: int) -> Callable[[jax.Array], jax.Array] | None:
  """x[rows, ...] -> x constrained to its rows split over `BATCH_AXES` (inside jit).

  None without a mesh, or when the batch axes do not divide `rows`.
  """
  if mesh is None or tuple(batch_spec_for((rows,), mesh)) == ():
    return None

  def constrain(x):
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(BATCH_AXES, *([None] * (x.ndim - 1)))))

  return constrain


def gathered_over_batch_axes(tree: PyTree, mesh: Mesh) -> PyTree:
  """`tree` (laid out by `param_specs`) constrained to its specs without the batch axes.

  Each device then holds whole parameters but for their "tensor" split: what
  a computation whose rows are split over ("data", "fsdp") needs (FSDP's
  all-gather), written once so that several computations share the copy.
  """
  def drop_batch_axes(spec: P) -> P:
    def keep(entry):
      if entry is None or isinstance(entry, str):
        return None if entry in BATCH_AXES else entry
      kept = tuple(a for a in entry if a not in BATCH_AXES)
      return kept[0] if len(kept) == 1 else (kept or None)
    return P(*(keep(e) for e in spec))

  specs = jax.tree.map(drop_batch_axes, param_specs(tree, mesh), is_leaf=lambda x: isinstance(x, P))
  return jax.lax.with_sharding_constraint(tree, named(mesh, specs))


def apply_rows_split(model: Any, params: PyTree, tokens: jax.Array,
                     constrain: Callable[[jax.Array], jax.Array] | None, *, remat_blocks: bool = False,
                     **kwargs) -> Any:
  """``model.apply({"params": params}, tokens, **kwargs)``, every activation of the rows split.

  Every array output [rows, ...] of every flax module call inside goes
  through `constrain` (`rows_constraint`; None: a plain apply). Without it
  XLA's partitioner may keep each FSDP-sharded weight in place and replicate
  the activations instead: every device then computes partial sums of ALL
  the rows' activations (and logits) and all-reduces them
  (bench/compiled_memory.py found a whole microbatch's float32 logits on
  every device). With it, each layer's weights are gathered instead.

  The split call runs gemma's forward without its own `nn.jit`
  (`gemma_internals.forward`): that jit's trace cache ignores interceptors, so
  the constraints of one mesh would leak into a later call without them.

  ``remat_blocks=True`` rematerialises every transformer block
  (`_remat_block_interceptor`): the backward pass recomputes a block's
  activations, and on a mesh gathers its weights again, from the block's
  saved input. Same values and gradients.
  """
  if constrain is None and not remat_blocks:
    return model.apply({"params": params}, tokens, **kwargs)
  rows = tokens.shape[0]

  def interceptor(next_fun, args, kw, context):
    del context
    out = next_fun(*args, **kw)
    return jax.tree.map(
        lambda x: constrain(x) if isinstance(x, jax.Array) and x.ndim >= 2 and x.shape[0] == rows else x, out)

  def contexts():
    """What a block's recomputation in the backward pass must run under, as the forward did."""
    out = [gemma_internals.lora_context(model)]
    if constrain is not None:
      out.append(nn.intercept_methods(interceptor))
    return out

  with contextlib.ExitStack() as stack:
    if constrain is not None:
      stack.enter_context(nn.intercept_methods(interceptor))
    if remat_blocks:
      stack.enter_context(nn.intercept_methods(
          functools.partial(_remat_block_interceptor, contexts=contexts)))
    return model.apply({"params": params}, tokens, method=gemma_internals.forward, **kwargs)


_IN_REMAT = []  # Non-empty while a block's own body runs (its call must not re-enter the interceptor).


def _remat_block_interceptor(next_fun, args, kw, context, *, contexts):
  """Runs a gemma `Block` call (no KV cache) as a rematerialised pure function.

  The forward pass keeps only the block's input; the backward pass gathers
  the block's (FSDP-split) weights again and recomputes its activations once
  the block's output cotangent exists. `jax.checkpoint` alone did not get
  this from XLA:CPU (bench/compiled_memory.py, BENCHMARKS.md): its
  optimization barriers are expanded away before CSE, which merged every
  recomputation back into the forward pass, and every layer's all-gather
  was scheduled at the start. Here each block's weights get a data
  dependency (+ 0) on the block's input in the forward pass and on its
  output cotangent in the backward pass, which orders both. `contexts()`
  re-enters the forward's flax interceptors (LoRA, rows split) while the
  backward recomputes.
  """
  module = context.module
  if (_IN_REMAT or context.method_name != "__call__" or not isinstance(module, gemma_internals.Block)
      or len(args) != 4 or args[2] is not None or kw):
    return next_fun(*args, **kw)
  x, positions, _, attn_mask = args
  unbound = module.clone(parent=None)

  def apply(block_params, x, positions, attn_mask):
    # Tie the weights to this block's input, so that XLA gathers them when
    # the block runs rather than all layers' at the start (+ 0: exact).
    tie = jnp.sum(x[:, :1, :1].astype(jnp.float32)) * 0.0
    block_params = jax.tree.map(lambda a: a + tie.astype(a.dtype), block_params)
    _IN_REMAT.append(True)
    try:
      return unbound.apply({"params": block_params}, x, positions, None, attn_mask)[1]
    finally:
      _IN_REMAT.pop()

  @jax.custom_vjp
  def block(block_params, x, positions, attn_mask):
    return apply(block_params, x, positions, attn_mask)

  def block_fwd(block_params, x, positions, attn_mask):
    return apply(block_params, x, positions, attn_mask), (block_params, x, positions, attn_mask)

  def block_bwd(residuals, y_bar):
    (block_params, x, positions, attn_mask), y_bar = jax.lax.optimization_barrier((residuals, y_bar))
    # XLA:CPU expands optimization barriers away before its CSE, which then
    # merges the recomputation with the forward pass (everything alive again);
    # an explicit data dependency on the cotangent (+ 0, exact for finite
    # values) survives it.
    tie = jnp.sum(y_bar[:, :1, :1].astype(jnp.float32)) * 0.0
    block_params = jax.tree.map(lambda a: a + tie.astype(a.dtype), block_params)
    x = x + tie.astype(x.dtype)
    with contextlib.ExitStack() as stack:
      for c in contexts():
        stack.enter_context(c)
      _, vjp = jax.vjp(lambda p, h: apply(p, h, positions, attn_mask), block_params, x)
      params_bar, x_bar = vjp(y_bar)
    zero = lambda a: np.zeros(np.shape(a), jax.dtypes.float0)
    return params_bar, x_bar, zero(positions), zero(attn_mask)

  block.defvjp(block_fwd, block_bwd)
  return None, block(module.variables["params"], x, positions, attn_mask)


def _specs_of(kind: str, tree: PyTree, mesh: Mesh) -> PyTree:
  if kind == "state":
    return state_specs(tree, mesh)
  if kind == "params":
    return param_specs(tree, mesh)
  if kind in ("batch", "groups"):
    groups = kind == "groups"
    return jax.tree.map(lambda x: batch_spec_for(np.shape(x), mesh, groups=groups), tree)
  if kind == "replicated":
    return jax.tree.map(lambda _: P(), tree)
  raise ValueError(f"unknown sharding kind {kind!r}; choose one of {KINDS}")


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
  dtype = x.dtype if hasattr(x, "dtype") else jnp.result_type(x)
  return jax.ShapeDtypeStruct(np.shape(x), dtype)


def jit_sharded(
    fun: Callable[..., Any],
    mesh: Mesh,
    in_kinds: Sequence[str],
    out_kinds: Sequence[str] | str,
    *,
    donate_argnums: int | Sequence[int] = (),
) -> Callable[..., Any]:
  """`jax.jit(fun)` with explicit in/out shardings on `mesh`, by argument kind.

  Kinds: ``"state"`` (`state_specs`), ``"params"`` (`param_specs`),
  ``"batch"`` (leading dimension over `BATCH_AXES`, `batch_spec_for`),
  ``"groups"`` ([B, N, ...] arrays: prompts, else samples, over `BATCH_AXES`),
  ``"replicated"``. Shardings are
  derived from the shapes of the first call (outputs via `jax.eval_shape`),
  and the compiled function is reused for later calls of the same shapes.
  Arguments not already placed so are put there first (`shard`); on several
  processes, host values (numpy, or process-local arrays) are taken as the
  global value.

  The returned function also has ``.lower(*args)`` (`jax.jit`'s, on these
  shardings), for compiling without running.

  Args:
    fun: positional arguments only (close over static settings).
    mesh: the device mesh.
    in_kinds: one kind per positional argument (a None argument is fine).
    out_kinds: one kind per output (a tuple output), or one kind.
    donate_argnums: as in `jax.jit`.

  Example::

    step = jit_sharded(sft_step, mesh, ("state", "batch"),
                       ("state", "replicated"), donate_argnums=0)
  """
  cache: dict[Any, Any] = {}

  def jitted_for(args):
    if len(args) != len(in_kinds):
      raise TypeError(f"expected {len(in_kinds)} arguments ({in_kinds}), got {len(args)}")
    abstract = jax.tree.map(_abstract, args)
    leaves, treedef = jax.tree.flatten(abstract)
    key = (treedef, tuple((x.shape, x.dtype) for x in leaves))
    if key not in cache:
      in_sh = tuple(named(mesh, _specs_of(k, a, mesh)) for k, a in zip(in_kinds, abstract))
      outs = jax.eval_shape(fun, *abstract)
      if isinstance(out_kinds, str):
        out_sh = named(mesh, _specs_of(out_kinds, outs, mesh))
      else:
        out_sh = tuple(named(mesh, _specs_of(k, o, mesh)) for k, o in zip(out_kinds, outs))
      cache[key] = (jax.jit(fun, in_shardings=in_sh, out_shardings=out_sh,
                            donate_argnums=donate_argnums), in_sh)
    return cache[key]

  def call(*args):
    jitted, in_sh = jitted_for(args)
    # Arguments committed elsewhere (e.g. one device) are moved first: jit
    # refuses committed inputs whose sharding differs from in_shardings.
    args = tuple(a if s is None else jax.tree.map(_put, a, s) for a, s in zip(args, in_sh))
    return jitted(*args)

  # Compile without running: arguments may be `jax.ShapeDtypeStruct`s, e.g.
  # ``step.lower(abstract_state, abstract_batch).compile().memory_analysis()``.
  call.lower = lambda *args: jitted_for(args)[0].lower(*args)
  return call


# ----------------------------------------------------------------------------
# Multi-host.

# Environment variables read by `initialize_distributed` when the config
# leaves a field unset.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _cluster_detected() -> bool:
  """A multi-process launcher JAX auto-detects (SLURM, Open MPI, Cloud TPU pod)."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
    return True
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed(config: Any = None) -> bool:
  """Starts `jax.distributed` for a multi-process run; a no-op for one process.

  Call it first, before anything touches devices (bon_jax.main does). Settings
  come from ``config.distributed`` and, where unset there, the environment:

  * ``coordinator_address`` / ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of
    process 0's coordinator service (every process passes the same).
  * ``num_processes`` / ``JAX_NUM_PROCESSES``: the number of processes (hosts).
  * ``process_id`` / ``JAX_PROCESS_ID``: this process's rank, 0 ..
    num_processes - 1.
  * ``JAX_LOCAL_DEVICE_IDS`` (read by JAX): the local devices to use.

  With none of them set, JAX's auto-detection runs when a cluster launcher is
  present: Cloud TPU pod slices (``TPU_WORKER_HOSTNAMES``), SLURM
  (``srun`` with ``SLURM_NTASKS`` > 1) and Open MPI (``mpirun``); otherwise the
  run is single-process and nothing happens. On CPU the cross-process
  collectives use gloo.

  Returns:
    Whether `jax.distributed` is initialised (after the call).
  """
  if jax.distributed.is_initialized():
    return True
  dist = config.get("distributed") if config is not None and hasattr(config, "get") else None
  get = lambda name, default: dist.get(name, default) if dist is not None else default
  address = get("coordinator_address", "") or os.environ.get(ENV_COORDINATOR, "")
  num = int(get("num_processes", 0) or os.environ.get(ENV_NUM_PROCESSES, 0) or 0)
  pid = int(get("process_id", -1))
  if pid < 0:
    pid = int(os.environ.get(ENV_PROCESS_ID, -1))
  explicit = bool(address) or num > 1
  if not explicit and not _cluster_detected():
    return False
  if num == 1:
    return False
  if explicit and (not address or num < 1 or pid < 0):
    if not _cluster_detected():
      raise config_lib.UserError(
          "a multi-process run needs config.distributed.coordinator_address, num_processes and"
          f" process_id (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); got"
          f" address={address!r}, num_processes={num}, process_id={pid}")
  if pid >= 0 and num >= 1 and not 0 <= pid < num:
    raise config_lib.UserError(f"process_id={pid} must be in [0, {num})")
  # CPU hosts exchange data through gloo (no effect on GPU / TPU backends).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=address or None,
      num_processes=num if num >= 1 else None,
      process_id=pid if pid >= 0 else None,
  )
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
