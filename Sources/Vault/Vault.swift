import Circuits
import Logging
import NIOCore
import NIOPosix
import Processes
import RoleProtocol
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The PTY vault: decides who may have a shell, owns every PTY master, and relays between
/// each terminal and the worker serving its client. It runs sandboxed (no exec, no files);
/// shells come from the nursery, which hands back the master of each new terminal.
///
/// An attachment is one client's use of one shell: the worker opens a circuit, presents the
/// client's credential and window size; the vault checks the credential (constant time), has
/// the nursery start a shell on a new PTY, and relays until the shell exits (the attachment
/// ends with its exit status) or the client leaves (the master is closed, so the shell's
/// session gets SIGHUP).
public final class Vault: Sendable {
    private struct State {
        var credential: Credential?
        var nursery: RoleTransport?
        var attachments = 0
    }

    private let state = Mutex(State())
    private let throttle = FailureThrottle(interval: .milliseconds(100))
    private let logger: Logger
    private let title: String

    public init(logger: Logger, title: String = "cloister") {
        self.logger = logger
        self.title = title
    }

    /// Serves the supervisor's conversations (configuration and links) until its transport
    /// closes; each worker link is served for as long as it lasts.
    public func serve(supervisor: RoleTransport) async {
        await withTaskGroup(of: Void.self) { group in
            while let circuit = try? await supervisor.accept() {
                group.addTask { await self.fromSupervisor(circuit) }
            }
            group.cancelAll()
        }
        state.withLock { $0.nursery?.close() }
    }

    /// One supervisor conversation, ended once acted on; a worker link's only after it is
    /// up, since the link is then served for as long as it lasts.
    private func fromSupervisor(_ circuit: RoleCircuit) async {
        let received: Received<SupervisorToVault>
        do {
            guard let first = try await circuit.receive(SupervisorToVault.self) else { return }
            received = first
        } catch {
            logger.error("refused a message from the supervisor", metadata: ["error": "\(error)"])
            try? await circuit.send([], end: true)
            return
        }
        switch received.message {
        case .configure(let token):
            state.withLock { $0.credential = token.map(Credential.init(token:)) }
            try? await circuit.send([], end: true)
        case .nurseryLink:
            // The decoder checked that the link came with its descriptor.
            do {
                let nursery = try await Link.vaultNursery.start(socket: received.descriptors!.take(0)!, side: .opener)
                let previous = state.withLock { s in
                    defer { s.nursery = nursery }
                    return s.nursery
                }
                previous?.close()
                logger.info("nursery linked")
            } catch {
                logger.error("nursery link failed", metadata: ["error": "\(error)"])
            }
            try? await circuit.send([], end: true)
        case .workerLink(let worker):
            let socket = received.descriptors!.take(0)!
            try? await circuit.send([], end: true)
            var log = logger
            log[metadataKey: "worker"] = "\(worker)"
            do {
                let link = try await Link.workerVault.start(socket: socket, side: .acceptor)
                log.info("worker linked")
                await serve(worker: link, logger: log)
                log.info("worker link closed", metadata: ["reason": "\(link.failure.map { "\($0)" } ?? "closed")"])
            } catch {
                log.error("worker link failed", metadata: ["error": "\(error)"])
            }
        }
    }

    private func serve(worker link: RoleTransport, logger: Logger) async {
        await withTaskGroup(of: Void.self) { group in
            while let circuit = try? await link.accept() {
                group.addTask { await self.attachment(circuit, logger: logger) }
            }
            group.cancelAll()
        }
        link.close()
    }

    /// Checks a presented credential. A wrong one is answered no sooner than its turn in
    /// `throttle`: guesses, from all workers together, get at most ten answers a second, so
    /// even a worker an attacker controls cannot search the password space quickly. A right
    /// one is answered at once; an empty one (nothing presented yet, as a browser's first
    /// request) is no guess and not delayed.
    private func authorized(_ token: [UInt8]) async -> Bool {
        guard let credential = state.withLock({ $0.credential }) else { return true }
        if credential.matches(token) { return true }
        if !token.isEmpty { await throttle.wait() }
        return false
    }

    private func attachment(_ circuit: RoleCircuit, logger: Logger) async {
        let first: WorkerToVault?
        do {
            first = try await circuit.receive(WorkerToVault.self)?.message
        } catch {
            logger.error("malformed first message of an attachment", metadata: ["error": "\(error)"])
            try? await circuit.send(VaultToWorker.refused(.malformedRequest), end: true)
            return
        }
        switch first {
        case .check(let token):
            let ok = await authorized(token)
            try? await circuit.send(ok ? VaultToWorker.accepted(title: title) : .refused(.badCredential), end: true)
        case .attach(let columns, let rows, let token):
            guard await authorized(token) else {
                logger.warning("attachment refused: bad credential")
                try? await circuit.send(VaultToWorker.refused(.badCredential), end: true)
                return
            }
            await relay(circuit, columns: columns, rows: rows, logger: logger)
        case .input, .resize, .pause, .resume:
            logger.error("an attachment began without attach or check", metadata: ["first": "\(first!)"])
            try? await circuit.send(VaultToWorker.refused(.malformedRequest), end: true)
        case nil:
            return  // ended before asking anything
        }
    }

    /// A started shell: its nursery conversation (which reports the exit) and its PTY master.
    private struct Shell {
        var conversation: RoleCircuit
        var pid: Int32
        var master: SystemPackage.FileDescriptor
    }

    private func spawnShell(columns: UInt16, rows: UInt16) async throws -> Shell {
        guard let nursery = state.withLock({ $0.nursery }) else { throw VaultError.noNursery }
        let conversation = try nursery.open()
        try await conversation.send(VaultToNursery.spawn(columns: columns, rows: rows))
        let reply = try await conversation.receive(NurseryToVault.self)
        switch reply?.message {
        case .spawned(let pid):
            // The decoder checked that the master came with it.
            return Shell(conversation: conversation, pid: pid, master: reply!.descriptors!.take(0)!)
        case .failed(let reason):
            throw VaultError.nursery(reason)
        case .exited, nil:
            throw VaultError.nursery("no shell and no reason")
        }
    }

    private func relay(_ circuit: RoleCircuit, columns: UInt16, rows: UInt16, logger: Logger) async {
        let shell: Shell
        do {
            shell = try await spawnShell(columns: columns, rows: rows)
        } catch {
            logger.error("no shell for an attachment", metadata: ["error": "\(error)"])
            try? await circuit.send(VaultToWorker.refused(.noTerminal), end: true)
            return
        }
        var log = logger
        log[metadataKey: "shell"] = "\(shell.pid)"
        let open = state.withLock { s in
            s.attachments += 1
            return s.attachments
        }
        defer { state.withLock { $0.attachments -= 1 } }
        log.info("attachment started", metadata: ["columns": "\(columns)", "rows": "\(rows)", "open_attachments": "\(open)"])
        // Our own copy of the master, for resizes: NIO closes its descriptors whenever the
        // channel goes, and a resize must never reach whatever reused that number. Holding it
        // also keeps the terminal up until the attachment has finished.
        let master = shell.master
        let ending: Ending
        do {
            try await circuit.send(VaultToWorker.accepted(title: title))
            let channelFD = try valueOrErrno("dup") { dup(master.rawValue) }
            let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
            do {
                channel = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .takingOwnershipOfDescriptor(inputOutput: channelFD) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                    }
            } catch {
                close(channelFD)  // not taken over: still ours
                throw error
            }
            ending = try await channel.executeThenClose { inbound, outbound in
                try await Self.pump(circuit: circuit, master: master, inbound: inbound, outbound: outbound)
            }
        } catch {
            log.error("attachment failed", metadata: ["error": "\(error)"])
            ending = .clientLeft
        }
        // The channel has closed its copies; closing ours, the last, hangs up the terminal,
        // and the shell's session gets SIGHUP if it is still there.
        try? master.close()
        let exit = await Self.exitStatus(of: shell.conversation)
        log.info("attachment ended", metadata: [
            "ending": "\(ending.rawValue)", "shell_exit": "\(exit.map { "\($0)" } ?? "unknown")",
        ])
        if ending == .shellExited, let exit {
            try? await circuit.send(VaultToWorker.exited(exit), end: true)
        }
    }

    enum Ending: String { case shellExited = "shell exited", clientLeft = "client left" }

    /// Relays until the shell's output ends (EOF or EIO on the master: no slave is open) or
    /// the worker ends the conversation. Pause stops reading the terminal, so a shell writing
    /// to a paused client blocks as it would on a stopped real terminal.
    private static func pump(circuit: RoleCircuit, master: SystemPackage.FileDescriptor,
                             inbound: NIOAsyncChannelInboundStream<ByteBuffer>,
                             outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws -> Ending {
        let gate = PauseGate()
        return await withTaskGroup(of: Ending.self) { group in
            group.addTask {
                do {
                    for try await chunk in inbound {
                        await gate.waitWhilePaused()
                        let message = chunk.withUnsafeReadableBytes { VaultToWorker.encodeOutput($0) }
                        try await circuit.send(message)
                    }
                } catch {}
                return .shellExited
            }
            group.addTask {
                defer { gate.resume() }
                // A worker that sends what does not belong on an attachment ends it.
                while let received = try? await circuit.receive(WorkerToVault.self) {
                    switch received.message {
                    case .input(let bytes):
                        guard (try? await outbound.write(ByteBuffer(bytes: bytes))) != nil else { return .shellExited }
                    case .resize(let columns, let rows):
                        try? PseudoTerminal.resize(master, rows: rows, columns: columns)
                    case .pause: gate.pause()
                    case .resume: gate.resume()
                    case .attach, .check: return .clientLeft
                    }
                    if received.isEnd { break }
                }
                return .clientLeft
            }
            let first = await group.next() ?? .clientLeft
            group.cancelAll()
            return first
        }
    }

    /// The nursery reports the exit once it has reaped the shell. A shell that ignores
    /// SIGHUP may outlive its attachment; its status is then not waited for.
    private static func exitStatus(of conversation: RoleCircuit) async -> Exit? {
        await withTaskGroup(of: Exit?.self) { group in
            group.addTask {
                while let received = try? await conversation.receive(NurseryToVault.self) {
                    if case .exited(let exit) = received.message { return exit }
                }
                return nil
            }
            group.addTask {
                await Wait.sleep(for: .seconds(2))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }
}

public enum VaultError: Error, CustomStringConvertible {
    case noNursery
    case nursery(String)
    public var description: String {
        switch self {
        case .noNursery: return "no nursery is linked"
        case .nursery(let reason): return "the nursery refused: \(reason)"
        }
    }
}
