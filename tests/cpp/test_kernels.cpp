// test_kernels.cpp — every copy of the dispatched kernels (core/kernels.h) this CPU can run
// against plain double-precision loops, on shapes that hit every vector width's main loop
// and tails (widths 1..70 and a wide 300), zeros, negative values and repeated features.
// Also: SPAD_KERNELS names a copy only if this build and CPU can run it.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "core/kernels.h"

using namespace spad;

namespace {

std::mt19937_64 rng(20261206);

template <class T>
std::vector<T> randn(size_t n, double zero_frac = 0.0) {
    std::normal_distribution<double> nd;
    std::uniform_real_distribution<double> ud;
    std::vector<T> v(n);
    for (auto &x : v) x = ud(rng) < zero_frac ? T(0) : (T)nd(rng);
    return v;
}

bool close(double got, double want, double tol) { return std::fabs(got - want) <= tol * (1.0 + std::fabs(want)); }

template <class T>
void check_fold_features(int64_t n, int64_t m, int64_t B, double tol) {
    const int64_t ld = (m + 15) / 16 * 16;  // a multiple of 64 bytes for both types
    std::vector<T> g = randn<T>((size_t)(B * ld));
    std::uniform_int_distribution<int> cnt_d(0, 5), ex_d(0, (int)B - 1);
    std::vector<int32_t> start(n + 1, 0), ex;
    std::vector<T> v;
    for (int64_t i = 0; i < n; ++i) {
        const int c = cnt_d(rng);
        for (int o = 0; o < c; ++o) ex.push_back(ex_d(rng));
        std::vector<T> vv = randn<T>(c);
        v.insert(v.end(), vv.begin(), vv.end());
        start[i + 1] = (int32_t)ex.size();
    }
    ex.push_back(0), v.push_back(T(0));  // keep data() valid when there are no entries
    std::vector<T> dW(n * m, T(-7));
    kern::fold_features(dW.data(), n, m, g.data(), ld, start.data(), ex.data(), v.data());
    int bad = 0;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < m; ++j) {
            double want = 0;
            for (int32_t o = start[i]; o < start[i + 1]; ++o) want += (double)v[o] * (double)g[ex[o] * ld + j];
            bad += !close((double)dW[i * m + j], want, tol);
        }
    if (bad) std::fprintf(stderr, "fold_features<%zu> n=%lld m=%lld: %d wrong\n", sizeof(T), (long long)n, (long long)m, bad);
    CHECK(bad == 0);
}

template <class T>
void check_fold_block(int64_t rows, int64_t m, int32_t cnt, double tol) {
    const int R = kern::tile_rows(), B = 9;
    const int64_t tiles = (rows + R - 1) / R;
    std::vector<T> g = randn<T>((size_t)(B * m));
    std::vector<int64_t> goff(cnt);
    std::uniform_int_distribution<int> ex_d(0, B - 1);
    for (auto &o : goff) o = (int64_t)ex_d(rng) * m;
    std::vector<T> vals = randn<T>((size_t)(cnt * rows)), vs((size_t)(tiles * cnt * R), T(0));
    for (int32_t o = 0; o < cnt; ++o)
        for (int64_t r = 0; r < rows; ++r) vs[((r / R) * cnt + o) * R + r % R] = vals[o * rows + r];
    std::vector<T> dW(rows * m, T(-7));
    kern::fold_block(dW.data(), m, rows, g.data(), goff.data(), vs.data(), cnt);
    int bad = 0;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < m; ++j) {
            double want = 0;
            for (int32_t o = 0; o < cnt; ++o) want += (double)vals[o * rows + r] * (double)g[goff[o] + j];
            bad += !close((double)dW[r * m + j], want, tol);
        }
    if (bad) std::fprintf(stderr, "fold_block<%zu> rows=%lld m=%lld: %d wrong\n", sizeof(T), (long long)rows, (long long)m, bad);
    CHECK(bad == 0);
}

template <class T, class C>
void check_magnitude(int64_t n, int64_t k) {
    std::vector<T> x = randn<T>((size_t)n, 0.5);  // half zeros, like a ReLU output
    std::vector<T> nzv(n + 16);
    std::vector<int32_t> nzi(n + 16);
    const int64_t nn = kern::compress_nonzero(x.data(), n, nzv.data(), nzi.data());
    int64_t want_nn = 0;
    bool order_ok = true;
    for (int64_t j = 0; j < n; ++j)
        if (x[j] != T(0)) {
            order_ok = order_ok && want_nn < nn && nzi[want_nn] == j && nzv[want_nn] == x[j];
            ++want_nn;
        }
    CHECK(nn == want_nn);
    CHECK(order_ok);
    std::vector<double> mass(n + 1);
    const double l1 = kern::prefix_abs(nzv.data(), nn, mass.data());
    double acc = 0;
    bool mass_ok = true;
    for (int64_t i = 0; i < nn; ++i) {
        acc += std::fabs((double)nzv[i]);
        mass_ok = mass_ok && close(mass[i], acc, 1e-12);
    }
    CHECK(mass_ok);
    CHECK(close(l1, acc, 1e-12));
    if (!(l1 > 0)) return;
    std::vector<int32_t> upto(nn + 1);
    std::vector<C> pair(2 * nn + 2);
    const double inv_step = (double)k / l1, u = 0.37;
    const int32_t most = kern::draw_counts(mass.data(), nzv.data(), nzi.data(), nn, inv_step, u, k, upto.data(), pair.data());
    bool draws_ok = upto[0] == 0;
    int32_t want_most = 0;
    for (int64_t i = 0; i < nn; ++i) {
        const double y = mass[i] * inv_step - u;
        const int32_t c = std::min<int32_t>((int32_t)std::ceil(y), (int32_t)k + 1);
        draws_ok = draws_ok && upto[i + 1] == c;
        const C code = (C)(nzv[i] < 0 ? -(nzi[i] + 1) : nzi[i] + 1);
        draws_ok = draws_ok && pair[2 * i] == code && pair[2 * i + 1] == code;
        want_most = std::max(want_most, upto[i + 1] - upto[i]);
    }
    CHECK(draws_ok);
    CHECK(most == want_most);
}

template <class T, class C>
void check_code_rows(int64_t n, int64_t m, int64_t B, int64_t k, double tol) {
    std::vector<T> g = randn<T>((size_t)(B * m)), sb = randn<T>((size_t)B);
    std::vector<C> codes((size_t)(B * k));
    std::uniform_int_distribution<int> f(1, (int)n), sgn(0, 1);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < k; ++t) codes[b * k + t] = b == 1 ? C(0) : (C)(sgn(rng) ? f(rng) : -f(rng));
    std::vector<T> dW(n * m, T(-7));
    kern::add_code_rows(dW.data(), n, m, g.data(), codes.data(), sb.data(), B, k);
    std::vector<double> want(n * m, 0.0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < k; ++t) {
            const int c = (int)codes[b * k + t];
            if (!c) continue;
            for (int64_t j = 0; j < m; ++j) want[(std::abs(c) - 1) * m + j] += (c < 0 ? -1.0 : 1.0) * (double)sb[b] * (double)g[b * m + j];
        }
    int bad = 0;
    for (int64_t i = 0; i < n * m; ++i) bad += !close((double)dW[i], want[i], tol);
    if (bad) std::fprintf(stderr, "add_code_rows<%zu> m=%lld: %d wrong\n", sizeof(T), (long long)m, bad);
    CHECK(bad == 0);
}

void run_all() {
    for (int64_t m : {1, 3, 7, 8, 10, 15, 16, 17, 31, 33, 48, 64, 65, 70, 300}) {
        check_fold_features<float>(37, m, 11, 1e-5);
        check_fold_features<double>(37, m, 11, 1e-12);
        check_fold_block<float>(19, m, 6, 1e-5);
        check_fold_block<double>(8, m, 3, 1e-12);
        check_code_rows<float, int16_t>(13, m, 6, 5, 1e-5);
        check_code_rows<double, int32_t>(13, m, 6, 5, 1e-12);
    }
    for (int64_t n : {1, 7, 8, 9, 15, 16, 17, 40, 64, 257, 784}) {
        check_magnitude<float, int16_t>(n, 26);
        check_magnitude<float, int32_t>(n, 3);
        check_magnitude<double, int16_t>(n, 26);
    }
}

}  // namespace

int main() {
    std::printf("kernels: %s (available: %s)\n", kern::isa(), kern::available_isas());
    CHECK(!kern::set_isa("sse9"));
    CHECK(!kern::set_isa(nullptr));
    for (const std::string name : kern::isa_list()) {
        CHECK(kern::set_isa(name.c_str()));
        CHECK(name == kern::isa());
        const int before = g_failures;
        run_all();
        std::printf("  %-8s %s\n", name.c_str(), g_failures == before ? "ok" : "FAILED");
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
