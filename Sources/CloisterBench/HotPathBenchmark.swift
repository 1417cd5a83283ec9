import Circuits
import Foundation
import Logging
import NIOCore
import NIOPosix
import Nursery
import Processes
import RoleProtocol
import Supervisor
import SystemPackage
import TerminalClient
import Vault
import WebAssets
import Worker

/// `cloister-bench hotpath [--keystrokes N] [--output BYTES] [--sessions S]`: the worker's and
/// the vault's code, in this one process and unsandboxed, so that an instruction counter can
/// say what they cost: N keystrokes echoed by `cat`, then BYTES of bulk output, then S more
/// sessions opened one after another (each answers an `echo`, then its client leaves and,
/// with no linger, the session ends). Time on this shared machine moves by tens of percent
/// between runs; instruction counts do not.
///
///     cp .build/release/cloister-bench /tmp/bench && strip /tmp/bench   # valgrind cannot read the DWARF
///     valgrind --tool=callgrind --callgrind-out-file=/tmp/cg /tmp/bench hotpath --keystrokes 2000
///     callgrind_annotate /tmp/cg | head -30
///
/// The shell runs in a process of its own (from the nursery, here in this process too) and is
/// not counted; the client is, so compare two builds with the same counts, and read the
/// functions of the Worker, Vault, Circuits and NIO modules.
struct HotPathBenchmark {
    var keystrokes: Int
    var outputBytes: Int
    var sessions: Int

    struct Failure: Error, CustomStringConvertible { var description: String }

    func run() async throws {
        var logger = Logger(label: "cloister-bench.hotpath")
        logger.logLevel = .error
        let credential = "bench:bench-pass"

        // The nursery: real shells on real PTYs.
        let nursery = Nursery(command: ["/bin/sh"],
                              environment: Nursery.shellEnvironment(user: "bench", home: "/", shell: "/bin/sh", inherited: [:]),
                              login: false, logger: logger)
        let (vaultToNursery, nurseryEnd) = try SocketCalls.socketPair(Link.vaultNursery.socketKind)
        Task {
            guard let link = try? await Link.vaultNursery.start(socket: nurseryEnd, side: .acceptor) else { return }
            await nursery.serve(vault: link)
        }

        // The vault, given its credential, its nursery and one worker link, as by the supervisor.
        var settings = SessionSettings()
        settings.linger = .zero
        let vault = Vault(logger: logger, settings: settings)
        let (supervisorEnd, vaultEnd) = try SocketCalls.socketPair(Link.supervisorVault.socketKind)
        Task {
            guard let link = try? await Link.supervisorVault.start(socket: vaultEnd, side: .acceptor) else { return }
            await vault.serve(supervisor: link)
        }
        let supervisor = try await Link.supervisorVault.start(socket: supervisorEnd, side: .opener)
        try await supervisor.open().tell(SupervisorToVault.configure(credential: Credential(userAndPassword: credential).token))
        try await supervisor.open().tell(SupervisorToVault.nurseryLink, descriptors: [vaultToNursery])
        try vaultToNursery.close()
        let (linkForVault, linkForWorker) = try SocketCalls.socketPair(Link.workerVault.socketKind)
        try await supervisor.open().tell(SupervisorToVault.workerLink(worker: 0), descriptors: [linkForVault])
        try linkForVault.close()

        // The worker, on an event loop of its own.
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let link = VaultLink(loop: loop)
        try await link.replace(with: linkForWorker)
        let worker = WebWorker(settings: .init(), service: link, assets: AssetBundle(), logger: logger)

        // One client over loopback TCP, accepted here and handed to the worker.
        let listener = try Listener("127.0.0.1:0")
        guard let port = listener.address.split(separator: ":").last.flatMap({ UInt16($0) }) else {
            throw Failure(description: "no port in \(listener.address)")
        }
        let terminal = try await connect(port: port, credential: credential, listener: listener, worker: worker, loop: loop)

        let (keystrokes, outputBytes) = (self.keystrokes, self.outputBytes)
        let started = Date()
        try await onOwnThread {
            try terminal.client.authenticate(token: TerminalClient.token(credential))
            try terminal.client.input("stty raw -echo; echo ok-$((3+4)); exec cat\r")
            try terminal.client.readOutput { $0.contains("ok-7") }
            for i in 0..<keystrokes {
                let key = String(UnicodeScalar(UInt8(97 + i % 26)))
                try terminal.client.input(key)
                try terminal.client.readOutput { $0.contains(key) }
            }
        }
        // A second session prints the bulk output.
        if outputBytes > 0 {
            let bulk = try await connect(port: port, credential: credential, listener: listener, worker: worker, loop: loop)
            try await onOwnThread {
                try bulk.client.authenticate(token: TerminalClient.token(credential))
                try bulk.client.input("stty -echo; echo go-$((1+1))\r")
                try bulk.client.readOutput { $0.contains("go-2") }
                try bulk.client.input("head -c \(outputBytes) /dev/zero | tr '\\0' Z; echo; echo end-$((2+2))\r")
                let received = try bulk.client.readOutput(untilMarker: "end-4")
                let zs = received.reduce(0) { $0 + ($1 == UInt8(ascii: "Z") ? 1 : 0) }
                guard zs == outputBytes else { throw Failure(description: "\(zs) of \(outputBytes) bytes arrived") }
            }
        }
        for _ in 0..<sessions {
            let next = try await connect(port: port, credential: credential, listener: listener, worker: worker, loop: loop)
            try await onOwnThread {
                try next.client.authenticate(token: TerminalClient.token(credential))
                try next.client.input("echo up-$((5+5))\r")
                try next.client.readOutput { $0.contains("up-10") }
            }
        }
        withExtendedLifetime((terminal, supervisor)) {}
        print("cloister-bench hotpath: \(keystrokes) keystrokes echoed, \(outputBytes) bytes of output, \(sessions) sessions, in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }

    /// A client connected to `listener`, its socket accepted here and handed to `worker`.
    private func connect(port: UInt16, credential: String, listener: Listener, worker: WebWorker, loop: EventLoop) async throws
        -> EndToEndBenchmark.Handed {
        let client = Task.detached {
            EndToEndBenchmark.Handed(try TerminalClient.connect(port: port, headers: [("Authorization", "Basic \(TerminalClient.token(credential))")]))
        }
        let accepted = try await onOwnThread { try listener.accept() }
        await worker.serve(client: accepted, on: loop) {}
        return try await client.value
    }
}
