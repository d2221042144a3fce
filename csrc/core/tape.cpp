#include "tape.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <mutex>
#include <string>
#include <unordered_map>

#include "ops.h"
#include "reuse.h"

namespace spad {

// ---- the op table ------------------------------------------------------------------
#define SPAD_OP(name, saves) void backward_##name(Node &n, const Tensor &g, Tensor *gin);
#include "ops.def"
#undef SPAD_OP

namespace {
struct OpRow {
    const char *name;
    const char *saves;
    BackwardFn backward;
};
const OpRow kOps[] = {
#define SPAD_OP(name, saves) {#name, saves, backward_##name},
#include "ops.def"
#undef SPAD_OP
};
}  // namespace

// User-facing names are lower case ("matmul"), like the functions that record the ops.
const char *op_name(OpKind k) {
    static const std::vector<std::string> lower = [] {
        std::vector<std::string> v;
        for (const OpRow &r : kOps) {
            std::string s = r.name;
            for (char &c : s) c = (char)std::tolower((unsigned char)c);
            v.push_back(s);
        }
        return v;
    }();
    return lower[(int)k].c_str();
}
const char *op_saves(OpKind k) { return kOps[(int)k].saves; }

// ---- grad mode and recording -----------------------------------------------------------
static thread_local bool g_grad_enabled = true;
bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }

// Creation order. Atomic because threads may record separate graphs at once; within one
// graph (one thread) the order is still the recording order.
static std::atomic<uint64_t> g_seq{0};
uint64_t next_seq() { return ++g_seq; }

static Edge edge_of(const Tensor &t) {
    Edge e;
    if (t->grad_fn)
        e.node = t->grad_fn;
    else if (t->requires_grad)
        e.leaf = t;
    return e;
}

static const Tensor &deref(const Tensor *t);
static const Tensor &deref(const Tensor &t);

template <class It> static std::shared_ptr<Node> make_node_impl(OpKind op, It begin, It end) {
    if (!g_grad_enabled) return nullptr;
    bool any = false;
    for (It it = begin; it != end; ++it) any = any || deref(*it)->requires_grad;
    if (!any) return nullptr;
    auto n = std::make_shared<Node>();
    n->op = op;
    n->seq = ++g_seq;
    const size_t count = (size_t)(end - begin);
    n->next.reserve(count);
    n->in_shape.reserve(count);
    for (It it = begin; it != end; ++it) {
        n->next.push_back(edge_of(deref(*it)));
        n->in_shape.push_back(deref(*it)->shape);
    }
    n->dtype = deref(*begin)->dtype;
    return n;
}

// Iterates pointers to tensors or tensors alike (no temporary vector of shared_ptrs).
static const Tensor &deref(const Tensor *t) { return *t; }
static const Tensor &deref(const Tensor &t) { return t; }

std::shared_ptr<Node> make_node(OpKind op, std::initializer_list<const Tensor *> inputs) {
    return make_node_impl(op, inputs.begin(), inputs.end());
}

std::shared_ptr<Node> make_node(OpKind op, const std::vector<Tensor> &inputs) {
    return make_node_impl(op, inputs.begin(), inputs.end());
}

void attach(const Tensor &out, const std::shared_ptr<Node> &node) {
    if (!node) return;
    out->requires_grad = true;
    out->grad_fn = node;
    node->out_shape = out->shape;
}

Tensor saved_output(Node &n, int i) {
    const Tensor &v = n.saved[i].get(op_name(n.op));
    if (!g_grad_enabled) return v;
    Tensor a = view(v, v->shape, v->strides, v->offset);
    a->requires_grad = true;
    a->grad_fn = n.shared_from_this();
    return a;
}

// ---- iterative teardown -----------------------------------------------------------
// Dropping the last tensor of a 100k-op chain must not recurse 100k destructors deep:
// every reference this node holds to another node is moved to a thread-local queue, so
// no node is ever destroyed by this node's member destructors. Besides the edges, a saved
// input (not yet released) owns its producer through grad_fn; when this node's slots are
// that tensor's only owners, its grad_fn is moved to the queue as well.
Node::~Node() {
    static thread_local std::vector<std::shared_ptr<Node>> pending;
    static thread_local bool draining = false;
    for (SavedTensor &s : saved) {
        const Tensor &v = s.value;
        if (!v || !v->grad_fn) continue;
        long owners = 0;  // the same input may sit in several slots (x * x)
        for (const SavedTensor &o : saved) owners += o.value == v;
        if (v.use_count() == owners) pending.push_back(std::move(v->grad_fn));
    }
    for (Edge &e : next)
        if (e.node) pending.push_back(std::move(e.node));
    if (draining) return;
    draining = true;
    while (!pending.empty()) {
        std::shared_ptr<Node> n = std::move(pending.back());
        pending.pop_back();
        n.reset();  // may push more
    }
    draining = false;
}

// ---- gradient-complete hooks ---------------------------------------------------------
namespace {
struct HookEntry {
    std::weak_ptr<TensorImpl> leaf;
    std::shared_ptr<const GradHook> fn;
    unsigned forms = GRAD_DENSE;  // Note [Implicit leaf gradients]
};
struct HookRegistry {
    std::mutex mu;
    std::unordered_map<const TensorImpl *, HookEntry> map;
    std::atomic<size_t> size{0};  // lets backward() skip all hook bookkeeping when none exist
};
// Never destroyed: a hook may wrap an interpreter object that must not be freed after the
// interpreter has shut down. Hooks are always destroyed outside the lock for the same reason
// (freeing one may need the interpreter's lock, which a thread waiting on ours could hold).
HookRegistry &hook_registry() {
    static HookRegistry *r = new HookRegistry;
    return *r;
}

std::shared_ptr<const GradHook> hook_of(const TensorImpl *t, unsigned *forms = nullptr) {
    HookRegistry &r = hook_registry();
    std::shared_ptr<const GradHook> fn, dead;
    {
        std::lock_guard<std::mutex> lock(r.mu);
        auto it = r.map.find(t);
        if (it == r.map.end()) return nullptr;
        if (it->second.leaf.expired()) {  // a dead tensor's entry; t reuses its address
            dead = std::move(it->second.fn);
            r.map.erase(it);
            r.size = r.map.size();
        } else {
            fn = it->second.fn;
            if (forms) *forms = it->second.forms;
        }
    }
    return fn;
}
}  // namespace

void set_grad_complete_hook(const Tensor &leaf, GradHook hook, unsigned forms) {
    SPAD_CHECK(leaf, ValueError, "set_grad_complete_hook: got None instead of a tensor");
    SPAD_CHECK(leaf->is_leaf() && leaf->requires_grad, ValueError, "set_grad_complete_hook: the tensor of shape ",
               shape_str(leaf->shape), " is not a leaf that requires grad; only leaves accumulate gradients");
    HookRegistry &r = hook_registry();
    std::shared_ptr<const GradHook> fn = hook ? std::make_shared<const GradHook>(std::move(hook)) : nullptr, old;
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.map.find(leaf.get());
    if (it != r.map.end()) {
        old = std::move(it->second.fn);  // destroyed after the lock is released (declared before it)
        r.map.erase(it);
    }
    if (fn) r.map.emplace(leaf.get(), HookEntry{leaf, std::move(fn), forms});
    r.size = r.map.size();
}

bool has_grad_complete_hook(const Tensor &leaf) { return leaf && hook_of(leaf.get()) != nullptr; }
bool any_grad_complete_hooks() { return hook_registry().size.load() > 0; }

// ---- the reverse sweep -------------------------------------------------------------
static std::atomic<uint64_t> g_epoch{0};  // per-pass visit marks; unique across threads

namespace {
// Leaves with a hook that the current pass reaches: how many edges still owe them a
// contribution, and whether any contribution arrived.
struct HookedLeaf {
    std::shared_ptr<const GradHook> fn;  // null: the leaf has no hook
    unsigned forms = GRAD_DENSE;
    int64_t owed = 0;
    bool got = false;
};

// The reverse sweep running on this thread, as the rule of `cur` sees it (Note [Implicit
// leaf gradients]): which leaves are hooked, and which of cur's edges the rule settled itself.
struct Sweep {
    std::unordered_map<const TensorImpl *, HookedLeaf> *hooked = nullptr;
    bool create_graph = false;
    const Node *cur = nullptr;
    std::vector<char> settled;
};
thread_local Sweep *g_sweep = nullptr;

// The implicit gradient a hook on this thread is applying.
struct Applying {
    const TensorImpl *leaf = nullptr;
    const ImplicitGrad *g = nullptr;
    bool consumed = false;
};
thread_local Applying g_applying;
}  // namespace

static void accumulate_leaf(const Tensor &leaf, const Tensor &g, bool create_graph);

Tensor ImplicitGrad::dense() const {
    Tensor d = zeros(shape(), dtype());
    add_to(d, 1.0);
    return d;
}

unsigned implicit_grad_wanted(const Node &n, size_t i) {
    const Sweep *sw = g_sweep;
    if (!sw || sw->cur != &n || sw->create_graph || i >= n.next.size()) return GRAD_DENSE;
    const Edge &e = n.next[i];
    if (!e.leaf || e.leaf->grad) return GRAD_DENSE;
    auto it = sw->hooked->find(e.leaf.get());
    // owed == 1: this edge is the pass's last one into the leaf, and no earlier one delivered
    // (leaf->grad is empty), so the rule's contribution is the whole gradient.
    if (it == sw->hooked->end() || !it->second.fn || it->second.owed != 1) return GRAD_DENSE;
    return it->second.forms;
}

const ImplicitGrad *implicit_grad(const Tensor &leaf) {
    if (!leaf || g_applying.leaf != leaf.get()) return nullptr;
    g_applying.consumed = true;
    return g_applying.g;
}

void apply_implicit(const Node &n, size_t i, const ImplicitGrad &g) {
    SPAD_CHECK(implicit_grad_wanted(n, i) != GRAD_DENSE, RuntimeError, op_name(n.op),
               ": an implicit gradient for input ", i, " that backward did not ask for (a backward rule is wrong)");
    const Tensor &leaf = n.next[i].leaf;
    SPAD_CHECK(g.shape() == leaf->shape && g.dtype() == leaf->dtype, RuntimeError, "backward: gradient of shape ",
               shape_str(g.shape()), " does not match its tensor of shape ", shape_str(leaf->shape),
               " (an op's backward rule is wrong)");
    Sweep &sw = *g_sweep;
    HookedLeaf &h = sw.hooked->at(leaf.get());
    sw.settled[i] = 1;
    h.got = true;
    --h.owed;
    struct Scope {  // restored on every exit: a hook may throw (a bad learning rate)
        Applying prev;
        Scope(const TensorImpl *l, const ImplicitGrad *g) : prev(g_applying) { g_applying = Applying{l, g, false}; }
        ~Scope() { g_applying = prev; }
    } scope(leaf.get(), &g);
    {
        NoGradGuard no_grad;
        (*h.fn)(leaf);
    }
    // A hook that did not read the gradient (an optimizer that stopped updating in backward)
    // still finds it where a dense gradient would be.
    if (!g_applying.consumed) accumulate_leaf(leaf, g.dense(), false);
}

static void accumulate_leaf(const Tensor &leaf, const Tensor &g, bool create_graph) {
    SPAD_CHECK(g->shape == leaf->shape, RuntimeError, "backward: gradient of shape ", shape_str(g->shape),
               " does not match its tensor of shape ", shape_str(leaf->shape), " (an op's backward rule is wrong)");
    if (!leaf->grad) {
        // A fresh, private buffer: later accumulation writes into it in place, so it must not
        // alias anything else (the seed gradient, another op's output, the user's arrays).
        bool private_buf = g.use_count() == 1 && g->storage.use_count() == 1 && g->is_contiguous() &&
                           g->offset == 0 && !g->grad_fn;
        leaf->grad = (create_graph || private_buf) ? g : copy(g);
    } else if (create_graph || leaf->grad->grad_fn || g->grad_fn) {
        leaf->grad = ops::add(leaf->grad, g);
    } else {
        ops::add_(leaf->grad, g);
        return;
    }
    // The buffer now is a gradient (Note [Allocation accounting] in memory.h); a storage
    // that already has a category (a parameter passed as its own seed) keeps it.
    Storage &s = *leaf->grad->storage;
    if (s.category == MemCategory::OTHER) set_category(s, MemCategory::GRADIENTS);
}

void backward(const Tensor &root, const Tensor &grad, bool retain_graph, bool create_graph) {
    SPAD_CHECK(root->requires_grad, RuntimeError,
               "backward: the tensor (shape ", shape_str(root->shape),
               ") does not require grad and has no grad_fn; did you create the parameters with requires_grad=True, "
               "or run the forward pass under no_grad()?");
    Tensor seed = grad;
    if (!seed) {
        SPAD_CHECK(root->numel() == 1, RuntimeError, "backward: grad can be implicitly created only for scalar outputs; "
                   "got a tensor of shape ", shape_str(root->shape), "; pass grad= of the same shape");
        seed = full(root->shape, 1.0, root->dtype);
    } else {
        SPAD_CHECK(seed->shape == root->shape, ValueError, "backward: grad has shape ", shape_str(seed->shape),
                   " but the tensor has shape ", shape_str(root->shape));
        SPAD_CHECK(seed->dtype == root->dtype, TypeError, "backward: grad has dtype ", dtype_name(seed->dtype),
                   " but the tensor has dtype ", dtype_name(root->dtype));
    }
    const bool any_hooks = hook_registry().size.load() > 0;
    if (!root->grad_fn) {
        accumulate_leaf(root, seed, create_graph);
        if (any_hooks)
            if (std::shared_ptr<const GradHook> fn = hook_of(root.get())) {
                NoGradGuard no_grad;
                (*fn)(root);
            }
        return;
    }
    // Collect the reachable nodes without recursion (and count the edges into hooked leaves).
    const uint64_t epoch = ++g_epoch;
    std::vector<Node *> order, stack{root->grad_fn.get()};
    std::unordered_map<const TensorImpl *, HookedLeaf> hooked;
    root->grad_fn->visit = epoch;
    while (!stack.empty()) {
        Node *n = stack.back();
        stack.pop_back();
        order.push_back(n);
        for (Edge &e : n->next) {
            if (e.node && e.node->visit != epoch) {
                e.node->visit = epoch;
                stack.push_back(e.node.get());
            } else if (e.leaf && any_hooks) {
                auto ins = hooked.emplace(e.leaf.get(), HookedLeaf{});
                if (ins.second) ins.first->second.fn = hook_of(e.leaf.get(), &ins.first->second.forms);
                ins.first->second.owed++;
            }
        }
    }
    // Called for every leaf edge of every node in `order`, delivered or not: the last one
    // completes the leaf's gradient.
    auto settle = [&](const Edge &e, bool delivered) {
        auto it = hooked.find(e.leaf.get());
        if (it == hooked.end() || !it->second.fn) return;
        HookedLeaf &h = it->second;
        h.got = h.got || delivered;
        if (--h.owed == 0 && h.got) {
            NoGradGuard no_grad;
            (*h.fn)(e.leaf);
        }
    };
    std::sort(order.begin(), order.end(), [](Node *a, Node *b) { return a->seq > b->seq; });

    bool prev_mode = grad_enabled();
    set_grad_enabled(create_graph);
    root->grad_fn->grad_acc = seed;
    std::vector<Tensor> gin;
    Sweep sweep;
    sweep.hooked = &hooked;
    sweep.create_graph = create_graph;
    struct SweepScope {  // a hook may itself run a backward pass: restore the outer sweep
        Sweep *prev;
        explicit SweepScope(Sweep *s) : prev(g_sweep) { g_sweep = s; }
        ~SweepScope() { g_sweep = prev; }
    } sweep_scope(hooked.empty() ? nullptr : &sweep);
    try {
        for (Node *n : order) {
            Tensor g = std::move(n->grad_acc);
            n->grad_acc.reset();
            if (!g) {
                if (!hooked.empty())
                    for (const Edge &e : n->next)
                        if (e.leaf) settle(e, false);
                continue;
            }
            SPAD_CHECK(!n->released, RuntimeError, op_name(n->op),
                       ": trying to backward through the graph a second time (or directly access saved tensors after "
                       "they have already been freed). Saved intermediate values of the graph are freed when you call "
                       "backward(); specify retain_graph=True if you need to backward through the graph a second time.");
            gin.assign(n->next.size(), nullptr);
            if (!hooked.empty()) {
                sweep.cur = n;
                sweep.settled.assign(n->next.size(), 0);
            }
            kOps[(int)n->op].backward(*n, g, gin.data());
            sweep.cur = nullptr;
            // Free at last use: the incoming gradient and the payloads are dead once the rule
            // has run, so they go before the outgoing gradients are accumulated (which may
            // allocate), not at the end of the iteration.
            g.reset();
            if (!retain_graph) {
                // Only nodes that held payloads refuse a second pass (as in PyTorch).
                for (SavedTensor &s : n->saved)
                    if (s.defined()) {
                        s.release();
                        n->released = true;
                    }
            }
            for (size_t i = 0; i < n->next.size(); ++i) {
                Edge &e = n->next[i];
                if (!e.valid()) continue;
                if (!gin[i]) {
                    if (e.leaf && !hooked.empty() && !sweep.settled[i]) settle(e, false);
                    continue;
                }
                if (e.node) {
                    // Moved, not copied: the consumer must be the gradient's only owner to
                    // reuse its buffer (Note [Buffer reuse] in reuse.h).
                    Tensor &acc = e.node->grad_acc;
                    if (!acc)
                        acc = std::move(gin[i]);
                    else if (!create_graph && acc->shape == gin[i]->shape && acc->dtype == gin[i]->dtype &&
                             reusable(acc))
                        ops::add_(acc, gin[i]);  // a second path's gradient: add into the first
                    else
                        acc = ops::add(acc, gin[i]);
                } else {
                    accumulate_leaf(e.leaf, gin[i], create_graph);
                    // Dropped before the hook runs, so a hook that frees leaf->grad frees the buffer.
                    gin[i].reset();
                    if (!hooked.empty()) settle(e, true);
                }
                gin[i].reset();
            }
        }
    } catch (...) {
        for (Node *n : order) n->grad_acc.reset();
        set_grad_enabled(prev_mode);
        throw;
    }
    set_grad_enabled(prev_mode);
}

}  // namespace spad
