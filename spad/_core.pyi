"""Type stubs for spad._core (generated with pybind11-stubgen from the compiled module; regenerate
after changing the bindings: pybind11-stubgen spad._core -o /tmp/stubs && cp /tmp/stubs/spad/_core.pyi spad/)."""
from __future__ import annotations
import collections.abc
import numpy
import typing
__all__: list[str] = ['Estimator', 'Policy', 'PolicyKind', 'TapeBudgetError', 'Tensor', 'active_policy', 'adagrad_step', 'adam_step', 'assign_', 'available_kernel_isas', 'avg_pool2d', 'bump_version', 'clear_grads', 'concatenate', 'conv2d', 'cross_entropy', 'dropout', 'exp', 'from_numpy', 'full', 'gemm_backend', 'get_num_threads', 'has_grad_complete_hook', 'is_grad_enabled', 'kernel_isa', 'linear', 'linear_chain', 'log', 'log_softmax', 'manual_seed', 'matmul', 'max_pool2d', 'memory_stats', 'mse_loss', 'op_table', 'peak_allocated_bytes', 'peak_tape_bytes', 'rad_block_size', 'relu', 'reset_peak_memory_stats', 'rmsprop_step', 'set_active_policy', 'set_grad_complete_hook', 'set_grad_enabled', 'set_kernel_isa', 'set_num_threads', 'set_tape_budget', 'sgd_step', 'sigmoid', 'softmax', 'sqrt', 'take', 'tanh', 'zeros']
class TapeBudgetError(MemoryError):
    pass
class Tensor:
    __array_ufunc__ = None
    _is_param: bool
    requires_grad: bool
    def __add__(self, arg0: typing.Any) -> Tensor:
        ...
    def __array__(self, dtype = None, copy = None):
        ...
    def __bool__(self) -> bool:
        ...
    def __float__(self) -> float:
        ...
    def __format__(self, spec: str) -> str:
        ...
    def __getitem__(self, index: typing.Any) -> Tensor:
        ...
    def __init__(self, array: numpy.ndarray) -> None:
        ...
    def __int__(self) -> int:
        ...
    def __iter__(self):
        ...
    def __len__(self) -> int:
        ...
    def __matmul__(self, arg0: typing.Any) -> Tensor:
        ...
    def __mul__(self, arg0: typing.Any) -> Tensor:
        ...
    def __neg__(self) -> Tensor:
        ...
    def __pow__(self, arg0: typing.Any) -> Tensor:
        ...
    def __radd__(self, arg0: typing.Any) -> Tensor:
        ...
    def __repr__(self) -> str:
        ...
    def __rmatmul__(self, arg0: typing.Any) -> Tensor:
        ...
    def __rmul__(self, arg0: typing.Any) -> Tensor:
        ...
    def __rsub__(self, arg0: typing.Any) -> Tensor:
        ...
    def __rtruediv__(self, arg0: typing.Any) -> Tensor:
        ...
    def __sub__(self, arg0: typing.Any) -> Tensor:
        ...
    def __truediv__(self, arg0: typing.Any) -> Tensor:
        ...
    def backward(self, grad: typing.Any = None, retain_graph: typing.Any = False, create_graph: typing.Any = False) -> None:
        """
        Accumulate d(self)/d(leaf) into every leaf's .grad. grad defaults to 1 for a scalar; the tape's
        saved payloads are freed unless retain_graph; create_graph records the backward pass too.
        Exact unless the forward pass ran under a sampling policy (spad.sampling.use).
        """
    def contiguous(self) -> Tensor:
        ...
    def detach(self) -> Tensor:
        """
        A tensor sharing the data, cut from the graph.
        """
    def exp(self) -> Tensor:
        ...
    def item(self) -> float:
        """
        The value of a one-element tensor as a float.
        """
    def log(self) -> Tensor:
        ...
    def max(self, axis: typing.Any = None, keepdims: typing.Any = False) -> Tensor:
        """
        Maximum over axis; the gradient goes to the first maximal element.
        """
    def mean(self, axis: typing.Any = None, keepdims: typing.Any = False) -> Tensor:
        """
        Mean over axis (None: all; int or tuple).
        """
    def numpy(self) -> numpy.ndarray:
        """
        A numpy view of the data (no copy).
        """
    def relu(self) -> Tensor:
        ...
    def reshape(self, *args) -> Tensor:
        ...
    def sigmoid(self) -> Tensor:
        ...
    def sqrt(self) -> Tensor:
        ...
    def sum(self, axis: typing.Any = None, keepdims: typing.Any = False) -> Tensor:
        """
        Sum over axis (None: all; int or tuple).
        """
    def tanh(self) -> Tensor:
        ...
    def tolist(self):
        ...
    def transpose(self, *args) -> Tensor:
        ...
    @property
    def T(self) -> Tensor:
        ...
    @property
    def _is_allocated(self) -> bool:
        """
        True when spad allocated the storage (False for borrowed numpy buffers).
        """
    @property
    def _memory_category(self) -> str:
        """
        Accounting category of the storage (Note [Allocation accounting] in csrc/core/memory.h).
        """
    @_memory_category.setter
    def _memory_category(self, arg1: str) -> None:
        ...
    @property
    def _version(self) -> int:
        ...
    @property
    def dtype(self) -> numpy.dtype[typing.Any]:
        ...
    @property
    def grad(self) -> Tensor:
        ...
    @grad.setter
    def grad(self, arg1: typing.Any) -> None:
        ...
    @property
    def grad_fn(self) -> typing.Any:
        ...
    @property
    def is_leaf(self) -> bool:
        ...
    @property
    def ndim(self) -> int:
        ...
    @property
    def shape(self) -> tuple:
        ...
    @property
    def size(self) -> int:
        ...
class PolicyKind:
    """
    Members:
    
      EXACT
    
      RAD
    
      CRS
    
      SPAD
    """
    CRS: typing.ClassVar[PolicyKind]
    EXACT: typing.ClassVar[PolicyKind]
    RAD: typing.ClassVar[PolicyKind]
    SPAD: typing.ClassVar[PolicyKind]
    __members__: typing.ClassVar[dict[str, PolicyKind]]
    @typing.overload
    def __eq__(self, other: PolicyKind) -> bool:
        ...
    @typing.overload
    def __eq__(self, other: typing.Any) -> bool:
        ...
    def __getstate__(self) -> int:
        ...
    def __hash__(self) -> int:
        ...
    def __index__(self) -> int:
        ...
    def __init__(self, value: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __int__(self) -> int:
        ...
    @typing.overload
    def __ne__(self, other: PolicyKind) -> bool:
        ...
    @typing.overload
    def __ne__(self, other: typing.Any) -> bool:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, state: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __str__(self) -> str:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def value(self) -> int:
        ...
class Estimator:
    """
    Members:
    
      EXACT
    
      RAD_DIFF
    
      RAD_SAME
    
      PROJECT
    
      CRS
    
      BERNOULLI
    
      SPAD
    
      SPAD_TOPK
    
      SPAD_MAG
    
      RAD_BLOCK
    """
    BERNOULLI: typing.ClassVar[Estimator]
    CRS: typing.ClassVar[Estimator]
    EXACT: typing.ClassVar[Estimator]
    PROJECT: typing.ClassVar[Estimator]
    RAD_BLOCK: typing.ClassVar[Estimator]
    RAD_DIFF: typing.ClassVar[Estimator]
    RAD_SAME: typing.ClassVar[Estimator]
    SPAD: typing.ClassVar[Estimator]
    SPAD_MAG: typing.ClassVar[Estimator]
    SPAD_TOPK: typing.ClassVar[Estimator]
    __members__: typing.ClassVar[dict[str, Estimator]]
    @typing.overload
    def __eq__(self, other: Estimator) -> bool:
        ...
    @typing.overload
    def __eq__(self, other: typing.Any) -> bool:
        ...
    def __getstate__(self) -> int:
        ...
    def __hash__(self) -> int:
        ...
    def __index__(self) -> int:
        ...
    def __init__(self, value: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __int__(self) -> int:
        ...
    @typing.overload
    def __ne__(self, other: Estimator) -> bool:
        ...
    @typing.overload
    def __ne__(self, other: typing.Any) -> bool:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, state: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __str__(self) -> str:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def value(self) -> int:
        ...
class Policy:
    def __init__(self, kind: PolicyKind, estimator: Estimator, keep: typing.SupportsFloat | typing.SupportsIndex, deterministic: typing.SupportsFloat | typing.SupportsIndex, refresh: typing.SupportsInt | typing.SupportsIndex, unbiased: bool, mix: typing.SupportsFloat | typing.SupportsIndex, ema: typing.SupportsFloat | typing.SupportsIndex, everywhere: bool, seed: typing.SupportsInt | typing.SupportsIndex, sampled_scores: bool = True, block: typing.SupportsInt | typing.SupportsIndex = 1) -> None:
        ...
    def clear_site_keeps(self) -> None:
        ...
    def set_site_keep(self, weight: Tensor, keep: typing.Any) -> None:
        """
        Keep for the site of this weight tensor (None: back to the policy's keep).
        """
    def site_scores(self) -> list:
        ...
    def state_bytes(self) -> int:
        ...
    def upcoming_step(self) -> int:
        """
        The step the next forward pass through a site belongs to.
        """
    @property
    def step(self) -> int:
        ...
    @property
    def visits(self) -> int:
        """
        Site packs recorded under this policy so far.
        """
class _Program:
    """
    A recorded step (spad.compile); replays in C++.
    """
    def dump(self) -> str:
        ...
    def op_counts(self) -> dict:
        ...
    def parameters(self) -> list:
        """
        The captured tensors that require grad (the parameters), in slot order.
        """
    def run(self, args: tuple) -> typing.Any:
        """
        Replay with new inputs (ValueError starting 'ReplayMismatch' if they do not fit).
        """
    def save(self, path: str) -> None:
        """
        Write the plan with its parameters and optimizer state (docs/plan_format.md).
        """
    @property
    def eager_peak_bytes(self) -> int:
        ...
    @property
    def heap_bytes(self) -> int:
        ...
    @property
    def lower_enabled(self) -> bool:
        """
        Whether replays may take the lowered, tape-free path (csrc/core/replay/lower.h).
        """
    @lower_enabled.setter
    def lower_enabled(self, arg1: bool) -> None:
        ...
    @property
    def lower_note(self) -> str:
        """
        Why the program, or its last call, did not take the lowered path ('' if it did).
        """
    @property
    def lowered(self) -> bool:
        """
        True once the program is lowered (tried at the first replay).
        """
    @property
    def lowered_runs(self) -> int:
        ...
    @property
    def lowered_workspace_bytes(self) -> int:
        ...
    @property
    def n_inputs(self) -> int:
        ...
    @property
    def n_records(self) -> int:
        ...
    @property
    def plan_bytes(self) -> int:
        ...
    @property
    def plan_dropped(self) -> bool:
        ...
    @property
    def replays(self) -> int:
        ...
class _Recorder:
    """
    Records the core calls of one step (spad.compile).
    """
    def __init__(self, inputs: collections.abc.Sequence[Tensor]) -> None:
        ...
    def abort(self) -> None:
        ...
    def finish(self, loss: typing.Any) -> tuple[_Program, list[str]]:
        ...
def _conv_weight_grad_rows(x: Tensor, g: Tensor, wshape: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], stride: typing.Annotated[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], "FixedSize(2)"], padding: typing.Annotated[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], "FixedSize(2)"], rows: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], weights: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex] = []) -> Tensor:
    ...
def _discard_implicit_grad(tensor: Tensor) -> bool:
    """
    Inside a gradient-complete hook: consume the leaf's gradient handed over without a dense dW
    (rows / add) without applying it; False if the gradient is the dense .grad. Memory probes use it.
    """
def _first_nonfinite(tensors: collections.abc.Sequence[Tensor], grads: bool = False) -> int:
    """
    Index of the first tensor (or .grad, with grads=True) holding NaN or inf; -1 if none.
    """
def _load_program(path: str) -> _Program:
    """
    Read a plan file written by _Program.save.
    """
def _memory_categories() -> dict:
    ...
def _memory_trace() -> list[int]:
    """
    The recorded allocated_bytes values, in order.
    """
def _owned_copy(array: numpy.ndarray) -> Tensor:
    """
    A spad-allocated, counted copy of a float array.
    """
def _parse_model(data: bytes) -> tuple[tuple, list]:
    """
    Validate a model file's bytes: (input_shape, [(kind, args, [float32 arrays])]).
    """
def _relu_owned(box: list) -> Tensor:
    ...
def _set_memory_trace(on: bool) -> None:
    """
    While on, record allocated_bytes after every allocation and release (on clears the record).
    """
def active_policy() -> Policy:
    ...
def adagrad_step(params: collections.abc.Sequence[Tensor], sq: collections.abc.Sequence[Tensor], lr: typing.SupportsFloat | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, weight_decay: typing.SupportsFloat | typing.SupportsIndex) -> None:
    ...
def adam_step(arg0: collections.abc.Sequence[Tensor], arg1: collections.abc.Sequence[Tensor], arg2: collections.abc.Sequence[Tensor], arg3: typing.SupportsFloat | typing.SupportsIndex, arg4: typing.SupportsFloat | typing.SupportsIndex, arg5: typing.SupportsFloat | typing.SupportsIndex, arg6: typing.SupportsFloat | typing.SupportsIndex, arg7: typing.SupportsFloat | typing.SupportsIndex, arg8: bool, arg9: typing.SupportsInt | typing.SupportsIndex) -> None:
    ...
def assign_(dst: Tensor, src: Tensor) -> None:
    """
    Copy src into dst in place and bump dst's version (parameter loads, averages).
    """
def available_kernel_isas() -> list[str]:
    """
    The instruction sets this build can run the sampled-backward kernels with on this CPU, best last.
    """
def avg_pool2d(x: Tensor, k: typing.SupportsInt | typing.SupportsIndex) -> Tensor:
    ...
def bump_version(arg0: Tensor) -> None:
    """
    Mark a tensor's storage as overwritten from outside the core.
    """
def clear_grads(params: collections.abc.Sequence[Tensor]) -> None:
    """
    Set .grad = None on every tensor of the list (Optimizer.zero_grad).
    """
def concatenate(tensors: collections.abc.Sequence[Tensor], axis: typing.SupportsInt | typing.SupportsIndex = 0) -> Tensor:
    ...
def conv2d(x: Tensor, w: Tensor, b: typing.Any = None, stride: typing.Annotated[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], "FixedSize(2)"] = [1, 1], padding: typing.Annotated[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], "FixedSize(2)"] = [0, 0]) -> Tensor:
    ...
def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """
    Mean softmax cross-entropy; labels: int64 tensor of shape (batch,).
    """
def dropout(x: Tensor, p: typing.SupportsFloat | typing.SupportsIndex, training: bool) -> Tensor:
    ...
def exp(x: Tensor) -> Tensor:
    ...
def from_numpy(array: numpy.ndarray, guard_writes: bool = False) -> Tensor:
    """
    Borrow a float32/float64 array (no copy). guard_writes: read-only while the tape holds it
    (Note [numpy writes under the tape] in numpy_bridge.h).
    """
def full(arg0: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], arg1: typing.SupportsFloat | typing.SupportsIndex, arg2: numpy.dtype[typing.Any]) -> Tensor:
    ...
def gemm_backend() -> str:
    ...
def get_num_threads() -> int:
    ...
def has_grad_complete_hook(tensor: Tensor) -> bool:
    ...
def is_grad_enabled() -> bool:
    ...
def kernel_isa() -> str:
    """
    The instruction set the sampled-backward kernels run with.
    """
def linear(x: Tensor, W: Tensor, b: typing.Any = None) -> Tensor:
    """
    x @ W + b in one op; W has shape (in_features, out_features), b (out_features,) or None.
    """
def linear_chain(x: Tensor, layers: list) -> Tensor:
    """
    Linear layers (W, b or None, relu after?) applied in order: the nodes of separate linear/relu
    calls, with intermediates overwritten in place once the tape no longer needs them.
    """
def log(x: Tensor) -> Tensor:
    ...
def log_softmax(x: Tensor, axis: typing.SupportsInt | typing.SupportsIndex = -1) -> Tensor:
    ...
def manual_seed(arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Seed the global counter-based RNG (dropout, samplers).
    """
def matmul(a: Tensor, b: Tensor) -> Tensor:
    """
    numpy.matmul semantics (1-D, 2-D, batched).
    """
def max_pool2d(x: Tensor, k: typing.SupportsInt | typing.SupportsIndex) -> Tensor:
    ...
def memory_stats() -> dict:
    """
    Tape bytes (now, peak, exact-equivalent), the tape budget, and allocated_bytes /
    peak_allocated_bytes: live data bytes of every storage spad allocated (numpy buffers
    shared zero-copy are not spad's allocation). Peaks are since reset_peak_memory_stats().
    """
def mse_loss(pred: Tensor, target: typing.Any) -> Tensor:
    """
    Mean squared error over all elements; target: a tensor or array-like of the same shape.
    """
def op_table() -> list:
    """
    (name, what it saves) for every op, from ops.def.
    """
def peak_allocated_bytes() -> int:
    """
    memory_stats()['peak_allocated_bytes'] without building a dict (per-step bookkeeping).
    """
def peak_tape_bytes() -> tuple[int, int]:
    """
    (peak_tape_bytes, peak_exact_tape_bytes) without building a dict (per-step bookkeeping).
    """
def rad_block_size(block: typing.SupportsInt | typing.SupportsIndex, k: typing.SupportsInt | typing.SupportsIndex) -> int:
    """
    Block size RAD(mode='different', block=...) uses for a layer keeping k values per example.
    """
def relu(x: Tensor) -> Tensor:
    """
    max(x, 0); the tape keeps one bit per element.
    """
def reset_peak_memory_stats() -> None:
    ...
def rmsprop_step(params: collections.abc.Sequence[Tensor], sq: collections.abc.Sequence[Tensor], bufs: collections.abc.Sequence[Tensor], lr: typing.SupportsFloat | typing.SupportsIndex, alpha: typing.SupportsFloat | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, momentum: typing.SupportsFloat | typing.SupportsIndex, nesterov: bool, weight_decay: typing.SupportsFloat | typing.SupportsIndex) -> None:
    ...
def set_active_policy(policy: Policy) -> None:
    ...
def set_grad_complete_hook(tensor: Tensor, hook: collections.abc.Callable[[Tensor], None], rows: bool = False, add: bool = False) -> None:
    """
    Call hook(tensor) inside backward() once the pass has delivered the last contribution to the
    leaf's .grad (not at all if it delivers none); None removes it. One hook per leaf.
    rows / add: the hook calls an optimizer step (sgd_step, ...) that can take a sampled weight's
    gradient row-sparse / added into the weight (plain SGD only) without a dense .grad; the
    hook then sees .grad None and must call that step.
    """
def set_grad_enabled(arg0: bool) -> None:
    ...
def set_kernel_isa(name: str) -> None:
    """
    Run the sampled-backward kernels with one of available_kernel_isas() (tests, benchmarks).
    """
def set_num_threads(arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
    ...
def set_tape_budget(arg0: typing.Any) -> None:
    ...
def sgd_step(params: collections.abc.Sequence[Tensor], bufs: collections.abc.Sequence[Tensor], lr: typing.SupportsFloat | typing.SupportsIndex, momentum: typing.SupportsFloat | typing.SupportsIndex, nesterov: bool, weight_decay: typing.SupportsFloat | typing.SupportsIndex) -> None:
    ...
def sigmoid(x: Tensor) -> Tensor:
    ...
def softmax(x: Tensor, axis: typing.SupportsInt | typing.SupportsIndex = -1) -> Tensor:
    ...
def sqrt(x: Tensor) -> Tensor:
    ...
def take(arg0: Tensor, arg1: Tensor, arg2: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> Tensor:
    ...
def tanh(x: Tensor) -> Tensor:
    ...
def zeros(arg0: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], arg1: numpy.dtype[typing.Any]) -> Tensor:
    ...
_MODEL_MAX_FILE_BYTES: int = 1073741824
