import Circuits
import CShim
import Processes
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Benchmarks, each reporting a ratio against a baseline measured in the same run.
///
///     cloister-bench circuits [--quick] [--window BYTES] …
///     cloister-bench e2e [--quick]
///
/// The process re-executes itself as the receiving side (`cloister-bench sink …`), so both
/// the baseline and the measured path move the same payloads between the same two processes.
@main
struct CloisterBench {
    static func main() async {
        let args = Array(CommandLine.arguments.dropFirst())
        do {
            try await run(args)
        } catch {
            // A failed check (bytes lost, a server that did not come up) is the answer of the
            // run, not a crash: one line, and a status scripts can test.
            print("cloister-bench \(args.first ?? ""): \(error)")
            exit(1)
        }
    }

    static func run(_ args: [String]) async throws {
        if let subcommand = args.first, let accepted = options[subcommand], let problem = unaccepted(Array(args.dropFirst()), accepted) {
            print("cloister-bench \(subcommand): \(problem)")
            usage()
        }
        switch args.first {
        case "circuits":
            func option(_ name: String) -> Int? {
                args.firstIndex(of: name).flatMap { args.indices.contains($0 + 1) ? Int(args[$0 + 1]) : nil }
            }
            let window = option("--window") ?? CircuitsBenchmark.defaultWindow
            if args.contains("--window") && option("--window") == nil {
                print("--window must be a number of bytes")
                exit(2)
            }
            do {
                try CircuitsBenchmark.configuration(.opener, window: window).validate()
            } catch {
                print("--window \(window): \(error)")
                exit(2)
            }
            try await CircuitsBenchmark(quick: args.contains("--quick"), onlyPayload: option("--payload"),
                                        onlyDescriptors: option("--fds"), onlyCircuits: option("--circuits"),
                                        skipRaw: args.contains("--no-raw"), skipCircuits: args.contains("--no-circuits"),
                                        window: window).run()
        case "e2e":
            if let index = args.firstIndex(of: "--sessions") {
                guard args.indices.contains(index + 1), let count = Int(args[index + 1]), count > 0 else {
                    print("--sessions needs a number of sessions")
                    exit(2)
                }
                try ManySessionsBenchmark(sessions: count, perClient: args.contains("--isolation-client"), record: args.contains("--record"),
                                         stream: args.contains("--stream")).run()
            } else {
                try EndToEndBenchmark(quick: args.contains("--quick"), memoryOnly: args.contains("--memory")).run()
            }
        case "compare":
            let peer = args.firstIndex(of: "--peer").flatMap { args.indices.contains($0 + 1) ? args[$0 + 1] : nil }
                ?? "../shared/peers/ttyd"
            let runs = args.firstIndex(of: "--runs").flatMap { args.indices.contains($0 + 1) ? Int(args[$0 + 1]) : nil }
            if args.contains("--runs") && (runs ?? 0) < 1 {
                print("--runs needs a number of runs, at least 1")
                exit(2)
            }
            var only = Set(PeerComparison.Row.allCases)
            if let index = args.firstIndex(of: "--only") {
                let names = args.indices.contains(index + 1) ? args[index + 1].split(separator: ",").map(String.init) : []
                let rows = names.compactMap(PeerComparison.Row.init(rawValue:))
                guard !rows.isEmpty, rows.count == names.count else {
                    print("--only takes rows separated by commas: \(PeerComparison.Row.allCases.map(\.rawValue).joined(separator: ","))")
                    exit(2)
                }
                only = Set(rows)
            }
            let balancer = args.firstIndex(of: "--balancer").flatMap { args.indices.contains($0 + 1) ? args[$0 + 1] : nil }
            guard balancer.map({ ["haproxy", "nginx"].contains($0) }) ?? true else {
                print("--balancer takes haproxy or nginx, not '\(balancer!)'")
                exit(2)
            }
            guard balancer == nil || (!args.contains("--isolation-client") && !args.contains("--tls")) else {
                print("--balancer compares the same server reached directly and through the balancer: not with --isolation-client or --tls")
                exit(2)
            }
            guard !args.contains("--record") || (balancer == nil && !args.contains("--isolation-client")) else {
                print("--record compares the same server without and with recording: not with --balancer or --isolation-client")
                exit(2)
            }
            var comparison = PeerComparison(peer: peer, quick: args.contains("--quick"), isolationPeer: args.contains("--isolation-client"),
                                            tls: args.contains("--tls"), balancer: balancer, recordingPeer: args.contains("--record"))
            try comparison.run(runs: runs, only: only)
        case "hotpath":
            func option(_ name: String, _ fallback: Int) -> Int {
                args.firstIndex(of: name).flatMap { args.indices.contains($0 + 1) ? Int(args[$0 + 1]) : nil } ?? fallback
            }
            try await HotPathBenchmark(keystrokes: option("--keystrokes", 2000), outputBytes: option("--output", 0), sessions: option("--sessions", 0)).run()
        case "sink":
            try await Sink.run(Array(args.dropFirst()))
        default:
            usage()
        }
    }

    /// Each subcommand's options, and whether an option takes a value: anything else on the
    /// command line is refused rather than ignored, so a mistyped option never runs a
    /// benchmark other than the one asked for.
    static let options: [String: [String: Bool]] = [
        "circuits": ["--quick": false, "--payload": true, "--fds": true, "--circuits": true, "--window": true, "--no-raw": false, "--no-circuits": false],
        "e2e": ["--quick": false, "--memory": false, "--sessions": true, "--isolation-client": false, "--record": false, "--stream": false],
        "compare": ["--quick": false, "--peer": true, "--runs": true, "--only": true, "--isolation-client": false, "--tls": false,
                    "--balancer": true, "--record": false],
        "hotpath": ["--keystrokes": true, "--output": true, "--sessions": true],
    ]

    /// What is wrong with `arguments` for a subcommand accepting `accepted`, if anything: an
    /// unknown option, an option without its value, or a value that is not a whole number
    /// where the option counts something (every valued option but `--peer` and `--only`).
    static func unaccepted(_ arguments: [String], _ accepted: [String: Bool]) -> String? {
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            guard let takesValue = accepted[argument] else {
                return "unknown option '\(argument)' (accepted: \(accepted.keys.sorted().joined(separator: " ")))"
            }
            if takesValue {
                guard index + 1 < arguments.count else { return "\(argument) needs a value" }
                let value = arguments[index + 1]
                if !["--peer", "--only", "--balancer"].contains(argument), Int(value).map({ $0 >= 0 }) != true {
                    return "\(argument) takes a whole number, not '\(value)'"
                }
                index += 1
            }
            index += 1
        }
        return nil
    }

    static func usage() -> Never {
        print("usage: cloister-bench circuits [--quick] [--payload BYTES] [--fds 0|1] [--circuits N] [--window BYTES] [--no-raw] [--no-circuits]")
        print("       cloister-bench e2e [--quick] [--memory] | e2e --sessions N [--isolation-client] [--record | --stream]   (N concurrent shells; see PERFORMANCE.md)")
        print("       cloister-bench compare [--quick] [--peer PATH | --isolation-client | --balancer haproxy|nginx | --record] [--tls] [--runs N]")
        print("                              [--only idle,memory,bulk,echo,sessions]")
        print("       cloister-bench hotpath [--keystrokes N] [--output BYTES] [--sessions S]   (in one process, for an instruction counter)")
        print("                                 (the peer defaults to ../shared/peers/ttyd)")
        exit(2)
    }
}

/// One measurement: what was moved and how long it took.
struct Measurement {
    var messages: Int
    var bytes: Int
    var seconds: Double
    var messagesPerSecond: Double { Double(messages) / seconds }
    var megabytesPerSecond: Double { Double(bytes) / seconds / 1e6 }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func fixed(_ value: Double, _ digits: Int) -> String {
    var s = String(Int((value * pow(10, Double(digits))).rounded()))
    if digits == 0 { return s }
    while s.count <= digits { s = "0" + s }
    s.insert(".", at: s.index(s.endIndex, offsetBy: -digits))
    return s
}
