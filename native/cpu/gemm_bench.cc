// Standalone correctness check and benchmark for tf::gemm (not part of the addon).
//   g++ -O3 -march=native -mprefer-vector-width=512 -std=c++20 -pthread native/cpu/gemm_bench.cc native/cpu/gemm.cc
//       native/cpu/gemm_bf16.cc native/common/threads.cc -o /tmp/gemm_bench && /tmp/gemm_bench
// Options: --quick (checks only), --f32 (float checks only), --bf16 (benchmarks of bf16 products), --bench-only,
// --filter SUBSTRING (benchmarks whose name contains it), --seconds S (time per benchmark, default 0.05 s per trial).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../common/denormals.h"
#include "../common/threads.h"
#include "gemm.h"

namespace {

std::mt19937_64 rng(12345);
std::string bench_filter;
double trial_seconds = 0.05;
// --f32: only the float cases (the SIMD kernels'), for slow runs such as the aarch64 build under qemu; double and bf16
// products run the portable kernel, which the native runs check.
bool f32_only = false;
// --bf16: the benchmarks run bf16 products (AMX or AVX-512 BF16 where usable, TARFLOW_CPU_GEMM) instead of float ones.
tf::Precision bench_precision = tf::Precision::F32;

template <typename T>
std::vector<T> rand_vec(size_t n) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(rng));
  return v;
}

template <typename T>
int check_case(bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t pad, T alpha, T beta, bool parallel) {
  const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  auto A = rand_vec<T>(static_cast<size_t>((ta ? K : M) * lda));
  auto B = rand_vec<T>(static_cast<size_t>((tb ? N : K) * ldb));
  auto C = rand_vec<T>(static_cast<size_t>(M * ldc));
  if (beta == T(0))  // beta == 0 must not read C: poison it.
    for (auto& x : C) x = std::numeric_limits<T>::quiet_NaN();
  auto C0 = C;
  tf::gemm<T>(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc, parallel);
  double max_err = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double s = 0, sa = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[k * lda + i] : A[i * lda + k];
        const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
        sa += std::fabs(a * b);
      }
      double ref = double(alpha) * s + (beta == T(0) ? 0.0 : double(beta) * double(C0[i * ldc + j]));
      double scale = std::fabs(double(alpha)) * sa + (beta == T(0) ? 0.0 : std::fabs(double(beta) * C0[i * ldc + j])) + 1e-30;
      double err = std::fabs(double(C[i * ldc + j]) - ref) / scale;
      if (!(err <= max_err)) max_err = std::isnan(err) ? 1e30 : std::max(max_err, err);
    }
    // Padding columns must be untouched.
    for (int64_t j = N; j < ldc; ++j) {
      const T x = C[i * ldc + j], y = C0[i * ldc + j];
      if (!(x == y || (std::isnan(x) && std::isnan(y)))) max_err = 1e30;
    }
  }
  const double tol = sizeof(T) == 4 ? 1e-5 : 1e-12;
  if (max_err > tol) {
    std::printf("FAIL %s ta=%d tb=%d M=%lld N=%lld K=%lld pad=%lld alpha=%g beta=%g par=%d err=%g\n",
                sizeof(T) == 4 ? "f32" : "f64", ta, tb, (long long)M, (long long)N, (long long)K, (long long)pad,
                double(alpha), double(beta), parallel, max_err);
    return 1;
  }
  return 0;
}

// Same inputs, 1 thread vs the pool: must be bit-identical.
int check_thread_invariance(bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  const int64_t lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
  auto A = rand_vec<float>(static_cast<size_t>(M * K));
  auto B = rand_vec<float>(static_cast<size_t>(N * K));
  auto C1 = rand_vec<float>(static_cast<size_t>(M * N));
  auto C2 = C1;
  tf::gemm<float>(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 1.0f, C1.data(), ldc, false);
  tf::gemm<float>(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 1.0f, C2.data(), ldc, true);
  if (std::memcmp(C1.data(), C2.data(), C1.size() * sizeof(float)) != 0) {
    std::printf("FAIL thread invariance ta=%d tb=%d M=%lld N=%lld K=%lld\n", ta, tb, (long long)M, (long long)N,
                (long long)K);
    return 1;
  }
  return 0;
}

// C and epilogue outputs for computing one product two ways (a reference way and a tested one) from the same
// starting C, a bias, and each way's GELU output when epilogue is set.
template <typename T>
struct TwoWays {
  std::vector<T> c, c_ref, bias, act, act_ref;
  tf::GemmEpilogue<T> ep, ep_ref;
  TwoWays(int64_t rows, int64_t ldc, int64_t N, bool epilogue)
      : c(rand_vec<T>(static_cast<size_t>(rows * ldc))), c_ref(c), bias(rand_vec<T>(static_cast<size_t>(N))), act(c.size()), act_ref(c.size()),
        ep{epilogue ? bias.data() : nullptr, epilogue ? act.data() : nullptr, nullptr},
        ep_ref{epilogue ? bias.data() : nullptr, epilogue ? act_ref.data() : nullptr, nullptr} {}
  // Element at of C and of the GELU output bit-identical both ways.
  bool same_at(size_t at) const {
    return std::memcmp(&c[at], &c_ref[at], sizeof(T)) == 0 && std::memcmp(&act[at], &act_ref[at], sizeof(T)) == 0;
  }
};

// A product under a triangle (gemm.h) against the full product of the same operands, whose op(A) holds the zeros the
// triangle promises: the wanted elements must be bit-identical (the skipped terms are exact zeros), padding untouched.
template <typename T>
int check_triangle(tf::GemmTriangle::Kind kind, int64_t diag, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha,
                   T beta, bool parallel, bool epilogue, tf::Precision precision = tf::Precision::F32) {
  const int64_t pad = 3, lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  auto A = rand_vec<T>(static_cast<size_t>((ta ? K : M) * lda));
  auto B = rand_vec<T>(static_cast<size_t>((tb ? N : K) * ldb));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const bool zero = (kind == tf::GemmTriangle::kLowerA && k > i + diag) || (kind == tf::GemmTriangle::kUpperA && k < i + diag);
      if (zero) (ta ? A[k * lda + i] : A[i * lda + k]) = T(0);
    }
  TwoWays<T> w(M, ldc, N, epilogue);
  tf::gemm<T>(precision, ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, w.c_ref.data(), ldc, parallel, &w.ep_ref);
  tf::gemm<T>(precision, ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, w.c.data(), ldc, parallel, &w.ep, {kind, diag});
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      const bool wanted = j < N && !(kind == tf::GemmTriangle::kLowerC && j > i + diag);
      const bool same = w.same_at(static_cast<size_t>(i * ldc + j));
      if ((wanted || j >= N) && !same) {
        std::printf("FAIL triangle %s%s kind=%d diag=%lld ta=%d tb=%d M=%lld N=%lld K=%lld alpha=%g beta=%g par=%d ep=%d at (%lld, %lld)\n",
                    sizeof(T) == 4 ? "f32" : "f64", precision == tf::Precision::BF16 ? " bf16" : "", int(kind), (long long)diag, ta, tb, (long long)M, (long long)N,
                    (long long)K, double(alpha), double(beta), parallel, epilogue, (long long)i, (long long)j);
        return 1;
      }
    }
  return 0;
}

int run_triangle_checks(int& cases) {
  int fails = 0;
  // Attention's shapes (T x T x hd, T x hd x T), ones with several K blocks (K > KC) and N blocks (N > NC), and
  // diagonals that leave whole panels all zero or unwanted.
  const int64_t shapes[][3] = {{196, 196, 64}, {196, 64, 196}, {49, 64, 49}, {700, 64, 700}, {300, 600, 300}, {33, 17, 40}, {5, 3, 9}};
  const int64_t diags[] = {0, -20, 15};
  using Tri = tf::GemmTriangle;
  for (Tri::Kind kind : {Tri::kLowerC, Tri::kLowerA, Tri::kUpperA})
    for (auto& s : shapes)
      for (int64_t diag : diags) {
        // The triangles' skipping is the same code for every kernel: --f32 runs (emulated) keep the small shapes.
        if (f32_only && s[0] * s[1] * s[2] > 5'000'000) continue;
        for (int ta = 0; ta < 2; ++ta)
          for (int tb = 0; tb < 2; ++tb) {
            const bool par = (s[0] + diag + ta) % 2 == 0, ep = (s[1] + tb) % 2 == 0;
            const float beta = diag == 0 ? 0.0f : diag < 0 ? 1.0f : 0.5f;
            fails += check_triangle<float>(kind, diag, ta, tb, s[0], s[1], s[2], 0.75f, beta, par, ep);
            cases += 1;
            if (f32_only) continue;
            fails += check_triangle<double>(kind, diag, ta, tb, s[0], s[1], s[2], 1.25, double(beta), !par, !ep);
            // bf16 products: on AMX or AVX-512 BF16 where this CPU has it (its own skipping), else the reference's
            // copies. Against the same kernel's full product; its check against the reference is gemm_bf16.cc's.
            fails += check_triangle<float>(kind, diag, ta, tb, s[0], s[1], s[2], 0.75f, beta, par, ep, tf::Precision::BF16);
            cases += 2;
          }
      }
  return fails;
}

// A product with B packed once (PackedB) against the same product packing B itself: bit-identical, padding untouched.
template <typename T>
int check_packed(bool tb, int64_t M, int64_t N, int64_t K, T alpha, T beta, bool parallel, bool epilogue) {
  const int64_t pad = 3, lda = K + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  auto A = rand_vec<T>(static_cast<size_t>(M * lda));
  auto B = rand_vec<T>(static_cast<size_t>((tb ? N : K) * ldb));
  TwoWays<T> w(M, ldc, N, epilogue);
  tf::gemm<T>(false, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, w.c_ref.data(), ldc, parallel, &w.ep_ref);
  const tf::PackedB<T> packed(tb, N, K, B.data(), ldb);
  tf::gemm<T>(M, alpha, A.data(), lda, packed, beta, w.c.data(), ldc, parallel, &w.ep);
  bool same = true;
  for (size_t at = 0; at < w.c.size(); ++at) same = same && w.same_at(at);
  if (!same) {
    std::printf("FAIL packed B %s tb=%d M=%lld N=%lld K=%lld alpha=%g beta=%g par=%d ep=%d\n", sizeof(T) == 4 ? "f32" : "f64", tb,
                (long long)M, (long long)N, (long long)K, double(alpha), double(beta), parallel, epilogue);
    return 1;
  }
  return 0;
}

// Every thread of a parallel loop computes with subnormals flushed (denormals.h), so a product whose terms underflow
// is zero whichever thread computes it, and the calling thread gets its own mode back afterwards.
int run_denormal_checks(int& cases) {
  int fails = 0;
  const bool flushes = tf::FlushDenormals::supported();
  std::vector<int> flushed(64, -1);
  tf::parallel_for(64, 1, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) flushed[i] = tf::FlushDenormals::active();
  });
  for (int64_t i = 0; i < 64; ++i)
    if (flushed[i] != static_cast<int>(flushes)) {
      std::printf("FAIL denormals: parallel_for index %lld ran with flushing %d, expected %d\n", (long long)i, flushed[i], flushes);
      ++fails;
      break;
    }
  if (tf::FlushDenormals::active()) {
    std::printf("FAIL denormals: the calling thread still flushes after parallel_for\n");
    ++fails;
  }
  // Inside the scope every op of the addon runs in; split over the threads.
  const int64_t M = 2048, N = 256, K = 64;  // every term 1e-42 (subnormal), every sum 6.4e-41: still subnormal
  std::vector<float> A(M * K, 1e-21f), B(K * N, 1e-21f), C(M * N, 1.0f);
  {
    tf::FlushDenormals flush;
    tf::gemm<float>(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N, true);
  }
  for (int64_t i = 0; i < M * N; ++i)
    if (flushes ? C[i] != 0.0f : !(C[i] > 0.0f)) {
      std::printf("FAIL denormals: C[%lld] = %g with flushing %d\n", (long long)i, double(C[i]), flushes);
      ++fails;
      break;
    }
  cases += 2;
  return fails;
}

int run_packed_checks(int& cases) {
  int fails = 0;
  // The sampler's shapes (few rows, the model's weights), narrow N, several N blocks (N > NC), several K blocks.
  const int64_t shapes[][3] = {{50, 384, 128}, {100, 512, 128}, {7, 128, 512}, {1, 16, 128}, {33, 8, 100}, {300, 1100, 65}, {64, 130, 900}};
  for (auto& s : shapes)
    for (int tb = 0; tb < 2; ++tb)
      for (int par = 0; par < 2; ++par) {
        const bool ep = (s[0] + tb) % 2 == 0;
        fails += check_packed<float>(tb, s[0], s[1], s[2], 1.0f, par ? 1.0f : 0.0f, par, ep);
        if (!f32_only) fails += check_packed<double>(tb, s[0], s[1], s[2], 0.5, par ? 0.0 : 0.25, par, !ep);
        cases += f32_only ? 1 : 2;
      }
  return fails;
}

int run_checks() {
  int fails = 0, cases = 0;
  const int64_t sizes[] = {1, 7, 33, 100, 257};
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (int64_t M : sizes)
        for (int64_t N : sizes)
          for (int64_t K : {int64_t(1), int64_t(7), int64_t(100), int64_t(257)}) {
            const int64_t pad = (M + N + K) % 3 == 0 ? 0 : 5;
            const bool par = (M + N) % 2 == 0;
            const float alphas[] = {1.0f, -0.5f}, betas[] = {0.0f, 1.0f, 0.3f};
            const float alpha = alphas[(M + K) % 2], beta = betas[(N + K) % 3];
            fails += check_case<float>(ta, tb, M, N, K, pad, alpha, beta, par);
            if (!f32_only) fails += check_case<double>(ta, tb, M, N, K, pad, double(alpha), double(beta), !par);
            cases += f32_only ? 1 : 2;
          }
  // Deep K (several K blocks), wide N (several N blocks), and the model's shapes at reduced M.
  const int64_t big[][3] = {{50, 70, 1000}, {33, 1100, 65}, {300, 384, 128}, {500, 128, 512}, {384, 128, 1300},
                            {98, 16, 128},  {700, 32, 128}, {128, 49, 64},   {49, 49, 64},     {1000, 16, 128}};
  for (auto& s : big)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int par = 0; par < 2; ++par) {
          fails += check_case<float>(ta, tb, s[0], s[1], s[2], 3, 1.0f, par ? 1.0f : 0.0f, par);
          if (!f32_only) fails += check_case<double>(ta, tb, s[0], s[1], s[2], 0, 0.5, 0.25, par);
          cases += f32_only ? 1 : 2;
        }
  // Degenerate K / alpha.
  fails += check_case<float>(false, false, 9, 9, 0, 1, 1.0f, 0.5f, true);
  fails += check_case<float>(false, true, 9, 9, 5, 1, 0.0f, 0.0f, true);
  cases += 2;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      // --f32 runs (emulated) take fewer rows and a shallower K, still several K blocks.
      fails += check_thread_invariance(ta, tb, f32_only ? 250 : 1000, 384, 1000);
      fails += check_thread_invariance(ta, tb, 100, 1000, 129);
      fails += check_thread_invariance(ta, tb, 384, 128, f32_only ? 1200 : 3000);
      fails += check_thread_invariance(ta, tb, 20, 40, 6000);  // N split leaves a narrow-kernel half
      fails += check_thread_invariance(ta, tb, 12544 / 4, 16, 128);
      cases += 5;
    }
  fails += run_triangle_checks(cases);
  fails += run_denormal_checks(cases);
  fails += run_packed_checks(cases);
  std::printf("correctness: %d cases, %d failures (threads=%d, bf16 products on %s)\n", cases, fails, tf::num_threads(),
              tf::cpu_bf16_gemm_kernel());
  return fails;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The epilogue a benchmarked product applies to its result (the model's MLP: fc1 forward, fc2's dX).
enum class Epi { kNone, kBiasGelu, kGeluGrad };

void bench(const char* name, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float beta, bool parallel = true,
           Epi epi = Epi::kNone) {
  if (!bench_filter.empty() && std::string(name).find(bench_filter) == std::string::npos) return;
  const int64_t lda = ta ? M : K, ldb = tb ? K : N;
  auto A = rand_vec<float>(static_cast<size_t>(M * K));
  auto B = rand_vec<float>(static_cast<size_t>(N * K));
  std::vector<float> C(static_cast<size_t>(M * N), 0.0f);
  std::vector<float> bias, act;
  tf::GemmEpilogue<float> ep;
  if (epi != Epi::kNone) {
    act = rand_vec<float>(static_cast<size_t>(M * N));
    if (epi == Epi::kBiasGelu) {
      bias = rand_vec<float>(static_cast<size_t>(N));
      ep.bias = bias.data();
      ep.gelu = act.data();
    } else {
      ep.gelu_grad_of = act.data();
    }
  }
  const double flops = 2.0 * M * N * K;
  auto run = [&] {
    tf::gemm<float>(bench_precision, ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, beta, C.data(), N, parallel,
                    epi == Epi::kNone ? nullptr : &ep);
  };
  run();
  int reps = std::max(1, static_cast<int>(trial_seconds * 1e11 / flops));
  double best = 1e30;
  for (int trial = 0; trial < 5; ++trial) {
    double t0 = now();
    for (int r = 0; r < reps; ++r) run();
    best = std::min(best, (now() - t0) / reps);
  }
  std::printf("%-34s ta=%d tb=%d M=%6lld N=%5lld K=%6lld  %8.3f ms  %7.1f GFLOP/s\n", name, ta, tb, (long long)M,
              (long long)N, (long long)K, best * 1e3, flops / best * 1e-9);
}

void run_bench() {
  std::printf("benchmark (threads=%d, %s products)\n", tf::num_threads(),
              bench_precision == tf::Precision::BF16 ? (std::string("bf16 on ") + tf::cpu_bf16_gemm_kernel()).c_str() : "float");
  bench("square 1024", false, false, 1024, 1024, 1024, 0.0f);
  bench("square 1024 (A^T B^T)", true, true, 1024, 1024, 1024, 0.0f);
  const int64_t M = 256 * 49;
  const int64_t shapes[][2] = {{384, 128}, {128, 128}, {512, 128}, {128, 512}, {32, 128}, {128, 16}};
  for (auto& s : shapes) {
    const int64_t N = s[0], K = s[1];
    char nm[64];
    std::snprintf(nm, sizeof nm, "fwd  (N=%lld,K=%lld)", (long long)N, (long long)K);
    bench(nm, false, true, M, N, K, 0.0f);
    std::snprintf(nm, sizeof nm, "dX   (N=%lld,K=%lld)", (long long)N, (long long)K);
    bench(nm, false, false, M, K, N, 0.0f);
    std::snprintf(nm, sizeof nm, "dW   (N=%lld,K=%lld)", (long long)N, (long long)K);
    bench(nm, true, false, N, K, M, 1.0f);
  }
  bench("fc1 fwd + bias + gelu", false, true, M, 512, 128, 0.0f, true, Epi::kBiasGelu);
  bench("fc2 dX + gelu grad", false, false, M, 512, 128, 0.0f, true, Epi::kGeluGrad);
  for (int64_t rows : {100, 1000}) {
    char nm[64];
    std::snprintf(nm, sizeof nm, "decode M=%lld (384,128)", (long long)rows);
    bench(nm, false, true, rows, 384, 128, 0.0f);
    std::snprintf(nm, sizeof nm, "decode M=%lld (128,512)", (long long)rows);
    bench(nm, false, true, rows, 128, 512, 0.0f);
    std::snprintf(nm, sizeof nm, "decode M=%lld (384,128) serial", (long long)rows);
    bench(nm, false, true, rows, 384, 128, 0.0f, false);
  }
  bench("attn QK^T 49x49x64 serial", false, true, 49, 49, 64, 0.0f, false);
  bench("attn PV 49x64x49 serial", false, false, 49, 64, 49, 0.0f, false);
  bench("attn QK^T 196x196x64 serial", false, true, 196, 196, 64, 0.0f, false);
  bench("attn PV 196x64x196 serial", false, false, 196, 64, 196, 0.0f, false);
  bench("attn dV 196x64x196 (P^T dO) serial", true, false, 196, 64, 196, 0.0f, false);
  bench("attn QK^T 256x256x64 serial", false, true, 256, 256, 64, 0.0f, false);
  bench("attn QK^T 1024x1024x64 serial", false, true, 1024, 1024, 64, 0.0f, false);
  bench("attn PV 1024x64x1024 serial", false, false, 1024, 64, 1024, 0.0f, false);
  bench("square 1024 serial", false, false, 1024, 1024, 1024, 0.0f, false);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, bench_only = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--bench-only")) bench_only = true;
    if (!std::strcmp(argv[i], "--f32")) f32_only = true;
    if (!std::strcmp(argv[i], "--bf16")) bench_precision = tf::Precision::BF16;
    if (!std::strcmp(argv[i], "--filter") && i + 1 < argc) bench_filter = argv[++i];
    if (!std::strcmp(argv[i], "--seconds") && i + 1 < argc) trial_seconds = std::atof(argv[++i]);
  }
  int fails = bench_only ? 0 : run_checks();
  if (!quick) run_bench();
  return fails ? 1 : 0;
}
