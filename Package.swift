// swift-tools-version: 6.1
//
// llamaprobe: LLaMA residual-stream extraction and reading-probe training on CPU.
//
// Code generation: on x86_64 Linux every target is compiled with `-target-cpu haswell` (AVX2, FMA, F16C);
// without it Swift's SIMD types lower to SSE2 and FMA / Float16 conversion become library calls.
// Portable build (any x86-64 CPU, slower): `LLAMAPROBE_PORTABLE=1 swift build -c release`.
import PackageDescription

let portable = Context.environment["LLAMAPROBE_PORTABLE"] == "1"

/// Flags shared by the Swift targets: CPU features unless portable (checked code: overflow traps stay on).
var cpuFlags: [SwiftSetting] = []
#if arch(x86_64)
if !portable {
    cpuFlags.append(.unsafeFlags(["-target-cpu", "haswell"], .when(platforms: [.linux])))
}
#endif
/// Kernels (Quant and the per-CPU kernel modules only): additionally drop exclusivity and overflow checks in
/// release builds (measured ~1.5x on SIMD loops), and optimize debug builds too (the tests run the forward
/// pass on real prompts). Everything that reads a file (Formats, Model, Probe, Extraction, CLI) keeps
/// Swift's overflow, bounds and exclusivity checks: no unchecked flag may be added to those targets.
let kernelFlags = cpuFlags + [
    .unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"], .when(configuration: .release)),
    .unsafeFlags(["-O"], .when(configuration: .debug)),
]
/// Targets that read files: CPU features, optimized in debug builds too (the tests run the forward pass),
/// overflow and exclusivity checks kept.
let checkedFlags = cpuFlags + [.unsafeFlags(["-O"], .when(configuration: .debug))]
/// A kernel module's own CPU level (x86_64 only; its functions are dispatched at run time).
func cpuTarget(_ cpu: String) -> [SwiftSetting] {
    var flags: [SwiftSetting] = [
        .unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"], .when(configuration: .release)),
        .unsafeFlags(["-O"], .when(configuration: .debug)),
    ]
    #if arch(x86_64)
    flags.append(.unsafeFlags(["-target-cpu", cpu], .when(platforms: [.linux])))
    #endif
    return flags
}

let package = Package(
    name: "llamaprobe",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "llamaprobe", targets: ["CLI"]),
        .executable(name: "llamaprobe-kernel-bench", targets: ["KernelBench"]),
        .executable(name: "llamaprobe-fuzz", targets: ["FuzzDriver"]),
        .library(name: "Quant", targets: ["Quant"]),
        .library(name: "Model", targets: ["Model"]),
        .library(name: "Probe", targets: ["Probe"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries (installed by scripts/setup.sh).
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        // libsentencepiece is C++ only: a small extern "C" API over an opaque handle.
        .target(name: "CSentencePiece", path: "Sources/CSentencePiece",
                cxxSettings: [.unsafeFlags(["-std=c++17"])],
                linkerSettings: [.linkedLibrary("sentencepiece"), .linkedLibrary("sentencepiece_train")]),

        // Compute: quantization types, kernels, the forward pass's row operations, thread pool, the OpenBLAS
        // path. Compiled unchecked; it parses no file.
        .target(name: "Quant", dependencies: ["CBLAS", "KernelsAVX2", "KernelsAVX512"], swiftSettings: kernelFlags),
        // File formats: memory mapping, atomic writes, safetensors, GGUF. Compiled with every check on.
        .target(name: "Formats", dependencies: ["Quant"], swiftSettings: checkedFlags),
        // SIMD kernels compiled for a given CPU level whatever the build's target; Quant calls them only
        // after checking the CPU at run time (so a portable build still uses them where they run).
        .target(name: "KernelsAVX2", swiftSettings: cpuTarget("haswell")),
        .target(name: "KernelsAVX512", swiftSettings: cpuTarget("cascadelake")),
        // Config, checkpoints, tokenizer, template, forward pass with residual capture.
        .target(name: "Model", dependencies: ["Quant", "Formats", "CSentencePiece"], swiftSettings: checkedFlags),
        // Shards, split, trainer, checkpoints, report.
        .target(name: "Probe", dependencies: ["Quant", "Formats", "CZstd"], swiftSettings: checkedFlags),
        // The extraction pipeline: model forward passes into shards.
        .target(name: "Extraction", dependencies: ["Model", "Probe", "Formats"], swiftSettings: checkedFlags),
        .executableTarget(name: "CLI", dependencies: [
            "Model", "Probe", "Extraction", "Formats",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/CLI", swiftSettings: checkedFlags),

        .executableTarget(name: "KernelBench", dependencies: ["Model", "Quant", "Formats"],
                          path: "Benchmarks/KernelBench", swiftSettings: kernelFlags),

        // Fuzzing: one target per file reader (Fuzz/Targets), the libFuzzer driver (`make fuzz`), and the
        // replay of seeds and of every input the fuzzer ever crashed on (Tests/FuzzTests, part of `make test`).
        .target(name: "FuzzTargets", dependencies: ["Quant", "Formats", "Model", "Probe", "Extraction"],
                path: "Fuzz/Targets", swiftSettings: checkedFlags),
        .executableTarget(name: "FuzzDriver", dependencies: ["FuzzTargets"], path: "Fuzz/Driver", swiftSettings: checkedFlags),

        .testTarget(name: "QuantTests", dependencies: ["Quant", "Formats"], swiftSettings: cpuFlags),
        .testTarget(name: "ModelTests", dependencies: ["Model", "Formats"], swiftSettings: cpuFlags),
        .testTarget(name: "ProbeTests", dependencies: ["Probe", "Formats"], swiftSettings: cpuFlags),
        .testTarget(name: "CLITests", dependencies: ["Model", "Probe", "Formats"], swiftSettings: cpuFlags),
        .testTarget(name: "FuzzTests", dependencies: ["FuzzTargets", "Formats"], swiftSettings: cpuFlags),
        .testTarget(name: "ExtractionTests", dependencies: ["Extraction", "Model", "Probe", "Formats"], swiftSettings: cpuFlags),
    ],
    swiftLanguageModes: [.v5]
)
