// swift-tools-version:6.0
import Foundation
import PackageDescription

// The products the targets below name again and again.
let system: Target.Dependency = .product(name: "SystemPackage", package: "swift-system")
let logging: Target.Dependency = .product(name: "Logging", package: "swift-log")
let nio: [Target.Dependency] = [.product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")]

let package = Package(
    name: "cloister",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cloister", targets: ["CloisterCLI"]),
        .executable(name: "cloister-bench", targets: ["CloisterBench"]),
        .library(name: "Circuits", targets: ["Circuits"]),
    ],
    // Exact versions: the roles' seccomp profiles were learned against what these libraries
    // call after the seal (SwiftNIO's event loop, BoringSSL's allocations, swift-system's
    // wrappers), so a new version is taken deliberately, with `cloister policy learn` run
    // against it. swift-collections is SwiftNIO's own dependency, named here only to pin it
    // (swift-atomics, its other one, has a single version in the mirror the build resolves from).
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", exact: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl", exact: "2.37.6"),
        .package(url: "https://github.com/apple/swift-collections", exact: "1.6.0"),
        .package(url: "https://github.com/adam-fowler/compress-nio", exact: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
    ],
    targets: [
        // C where Swift cannot reach: cmsg macros, libseccomp's function-like macros,
        // dl_iterate_phdr callbacks, constants missing from the Glibc overlay.
        .target(name: "CShim"),
        // The one layer over system calls: errors, EINTR, threads, SCM_RIGHTS, socket addresses.
        .target(name: "SystemCalls", dependencies: ["CShim", system]),
        .systemLibrary(
            name: "CSeccomp", pkgConfig: "libseccomp",
            providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(
            name: "CCap", pkgConfig: "libcap",
            providers: [.apt(["libcap-dev"])]),
        // OpenSSL's libcrypto: the keyholder reads the TLS key and signs with it; nothing else
        // links it (the workers' TLS is swift-nio-ssl's BoringSSL).
        .systemLibrary(
            name: "COpenSSL", pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]),
        // libxcrypt's crypt_rn: the vault checks a users file's hashes (yescrypt, SHA-512…).
        .systemLibrary(name: "CCrypt", providers: [.apt(["libcrypt-dev"])]),
        .target(
            name: "Circuits",
            dependencies: [
                "CShim", "SystemCalls",
                system,
            ] + nio,
            swiftSettings: [
                // Every mutable class property here is guarded by a lock or confined to one
                // event loop; the run-time exclusivity check costs several percent of the
                // per-message path in the circuits benchmark. Debug builds (the tests) keep
                // the check.
                .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
            ]),
        .target(
            name: "Sandbox",
            dependencies: [
                "CSeccomp", "CCap", "CShim", "SystemCalls",
                system,
                logging,
            ]),
        .target(
            name: "Supervisor",
            dependencies: [
                "CShim", "Circuits", "Sandbox", "Processes", "Recording", "RoleProtocol", "SystemCalls",
                logging,
                system,
            ]),
        .target(name: "RoleProtocol", dependencies: ["Circuits", logging, system] + nio),
        // The client of `cloister attach`, `policy learn`'s workload, the tests and the
        // benchmark; its TLS is swift-nio-ssl's, as the workers' is (no second TLS library).
        .target(
            name: "TerminalClient",
            dependencies: ["CShim", "SystemCalls", system, .product(name: "NIOSSL", package: "swift-nio-ssl"),
                           .product(name: "NIOTLS", package: "swift-nio")] + nio),
        .target(
            name: "Vault",
            dependencies: [
                "CCrypt", "CShim", "Circuits", "Processes", "RoleProtocol", "Sandbox", "SystemCalls", logging, system,
            ] + nio),
        .target(
            name: "Nursery",
            dependencies: [
                "CShim", "Circuits", "Processes", "RoleProtocol", "Sandbox", "SystemCalls", logging, system,
            ]),
        .target(
            name: "WebAssets",
            dependencies: [
                "CShim", "SystemCalls", system,
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "CompressNIO", package: "compress-nio"),
            ]),
        // Session recordings: asciicast v2 with a hash chain, written, verified and played.
        .target(name: "Recording", dependencies: ["COpenSSL"]),
        // The recorder role: writes recordings from the vault's feed into files the
        // supervisor opens for it.
        .target(
            name: "Recorder",
            dependencies: ["CShim", "Circuits", "Recording", "RoleProtocol", "Sandbox", "SystemCalls", logging, system]),
        // The template: forks a sealed worker per connection (Worker is not imported: the
        // child goes on as a worker through the command line's role).
        .target(name: "Template", dependencies: ["CShim", "RoleProtocol", "SystemCalls"]),
        .target(
            name: "Worker",
            dependencies: [
                "Circuits", "RoleProtocol", "Sandbox", "WebAssets", logging, system,
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ] + nio),
        .target(
            name: "Keyholder",
            dependencies: ["COpenSSL", "Circuits", "RoleProtocol", "Sandbox", "SystemCalls", logging, system] + nio),
        .target(
            name: "Processes",
            dependencies: ["CShim", "SystemCalls", system]),
        .executableTarget(
            name: "CloisterCLI",
            dependencies: [
                "CShim", "Circuits", "Processes", "Sandbox", "Supervisor", "Vault", "Worker", "Nursery", "Keyholder", "RoleProtocol", "Template",
                "Recording", "Recorder",
                "TerminalClient", "SystemCalls", "WebAssets",
                .product(name: "ArgumentParser", package: "swift-argument-parser"), logging, system,
                .product(name: "Prometheus", package: "swift-prometheus"),
            ] + nio),
        .executableTarget(
            name: "CloisterBench",
            dependencies: [
                "Circuits", "CShim", "Nursery", "Processes", "RoleProtocol", "Supervisor", "TerminalClient", "Vault", "WebAssets", "Worker",
                logging,
                system,
            ]),
        .testTarget(
            name: "ServeTests",
            dependencies: [
                "TestSupport", "TerminalClient", "Processes", "SystemCalls", "Circuits", "RoleProtocol", "Recording",
                system,
            ]),
        .target(
            name: "TestSupport",
            dependencies: [
                "Processes", "SystemCalls",
                system,
                logging,
            ],
            path: "Tests/TestSupport"),
        .testTarget(name: "RoleProtocolTests", dependencies: ["RoleProtocol"]),
        .testTarget(name: "RecordingTests", dependencies: ["Recording", "TestSupport"]),
        .testTarget(name: "KeyholderTests", dependencies: ["Keyholder"]),
        .testTarget(name: "WebAssetsTests", dependencies: ["WebAssets", "TestSupport"]),
        .testTarget(name: "ProcessesTests", dependencies: ["Processes"]),
        .testTarget(name: "ArchitectureTests", dependencies: ["TestSupport", "RoleProtocol"]),
        .testTarget(
            name: "WorkerTests",
            dependencies: [
                "Worker", "RoleProtocol", "WebAssets", "TestSupport", logging,
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ] + nio),
        .testTarget(
            name: "CircuitsTests",
            dependencies: [
                "Circuits", "CShim", "Processes", "TestSupport", "SystemCalls",
                system,
            ]),
        .testTarget(
            name: "SandboxTests",
            dependencies: [
                "Sandbox", "Circuits", "Processes", "CShim", "TestSupport", "RoleProtocol",
                logging,
                system,
            ]),
        .testTarget(
            name: "SupervisorTests",
            dependencies: [
                "Supervisor", "Sandbox", "Circuits", "Processes", "TestSupport", "RoleProtocol", "Vault", "WebAssets",
                logging,
                system,
            ]),
    ],
    swiftLanguageModes: [.v6]
)

// libFuzzer targets. `make fuzz` builds them with --sanitize=fuzzer --sanitize=address and
// -DLIBFUZZER, and libFuzzer supplies their `main`; in every other build they replay the files
// they are given (FuzzReplay), which `make test` does with each corpus, so a target that stops
// building or crashes on a seed fails the ordinary build and tests.
let fuzzTargets: [(String, [Target.Dependency])] = [
    ("FuzzLinkMessages", ["RoleProtocol"]),
    ("FuzzCircuitFrames", ["Circuits"]),
    ("FuzzWorker", ["Worker", "WebAssets", "RoleProtocol", "Circuits", .product(name: "NIOEmbedded", package: "swift-nio")] + nio),
    ("FuzzControlRequest", ["Supervisor"]),
    ("FuzzPolicy", ["Sandbox"]),
    ("FuzzCredentialFile", ["Supervisor", "RoleProtocol"]),
    ("FuzzClientHello", ["Worker"]),
]
package.targets.append(.target(name: "FuzzReplay", path: "Fuzz/FuzzReplay"))
for (name, dependencies) in fuzzTargets {
    package.targets.append(.executableTarget(name: name, dependencies: dependencies + ["FuzzReplay"], path: "Fuzz/\(name)"))
}
