{
  "targets": [
    {
      "target_name": "tarflow_cpu",
      "sources": [
        "native/common/op_args.cc",
        "native/common/op_table.cc",
        "native/common/tensor.cc",
        "native/common/threads.cc",
        "native/cpu/addon.cc",
        "native/cpu/adamw.cc",
        "native/cpu/attention.cc",
        "native/cpu/coupling.cc",
        "native/cpu/elementwise.cc",
        "native/cpu/embedding.cc",
        "native/cpu/flash_attention.cc",
        "native/cpu/gelu.cc",
        "native/cpu/gemm.cc",
        "native/cpu/gemm_bf16.cc",
        "native/cpu/layernorm.cc",
        "native/cpu/linear.cc",
        "native/cpu/patches.cc",
        "native/cpu/prior.cc",
        "native/cpu/reverse.cc",
        "native/cpu/rng.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      # -fno-trapping-math: we never unmask floating-point exceptions, and without it GCC keeps any loop with a
      # float compare feeding a select (the GELU's and exp's clamps) scalar wherever vectors lack mask registers:
      # AVX2 (most laptops), SSE2 and NEON. With it, an AVX2 build trained 30-60% faster here; values do not change.
      "cflags_cc": ["-std=c++20", "-O3", "-fexceptions", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"],
      "conditions": [
        # 512-bit vectors for the compiler's own loops too (the GEMM kernel uses them by hand): GCC's default of 256
        # left the GELU epilogues and softmax rows at half width; with it, the mnist-bpd training step is 2-4% faster.
        ["target_arch=='x64' and OS!='win'", {
          "cflags_cc": ["<!(node -p \"process.env.TARFLOW_NATIVE_ARCH || '-march=native'\")", "-mprefer-vector-width=512"]
        }],
        # macOS builds take their flags from xcode_settings, not cflags: the same -fopenmp-simd (the omp simd
        # reductions) and, on Intel Macs, -march=native (the AVX2 or AVX-512 GEMM kernels instead of the portable one).
        ["OS=='mac'", {
          "xcode_settings": {
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "CLANG_CXX_LANGUAGE_STANDARD": "c++20",
            "OTHER_CPLUSPLUSFLAGS": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
          }
        }],
        ["OS=='mac' and target_arch=='x64'", {
          "xcode_settings": {
            "OTHER_CPLUSPLUSFLAGS": ["<!(node -p \"process.env.TARFLOW_NATIVE_ARCH || '-march=native'\")"]
          }
        }]
      ]
    }
  ]
}
