// The policy clock (Note [Policy clock] in sampling.h), per-policy state and the thread's
// active policy.
#include "detail.h"

namespace spad {

Policy::Policy(PolicyConfig c) : cfg(c) {}
int64_t Policy::state_bytes() const {
    std::lock_guard<std::mutex> lk(mu);
    int64_t b = 0;
    for (const auto &kv : sites) {
        SiteState &s = *kv.second;
        std::lock_guard<std::mutex> slk(s.mu);
        b += (int64_t)(s.score.size() + s.dy_norm.size() + s.acc.size()) * 8 +
             (s.q ? (int64_t)s.q->storage->nbytes : 0);
    }
    return b;
}
bool Policy::scoring_step(int64_t s) const {
    return cfg.kind == PolicyKind::SPAD && !cfg.sampled_scores && (s - 1) % cfg.refresh == 0;
}
bool Policy::scoring_step() const { return scoring_step(step); }
int64_t Policy::upcoming_step() const {
    std::lock_guard<std::mutex> lk(mu);
    const std::shared_ptr<StepToken> t = current.lock();
    return !t || t->consumed ? step + 1 : step;
}
std::shared_ptr<StepToken> Policy::enter_step() {
    std::shared_ptr<StepToken> t = current.lock();
    if (!t || t->consumed) {  // Note [Policy clock]
        t = std::make_shared<StepToken>();
        current = t;
        ++step;
    }
    ++visits;
    return t;
}

static thread_local std::shared_ptr<Policy> g_active;
void set_active_policy(const std::shared_ptr<Policy> &p) { g_active = p; }
const std::shared_ptr<Policy> &active_policy() { return g_active; }

void note_read(const SavedTensor &slot) { sampling_detail::mark_read(slot); }

}  // namespace spad
