import Circuits
import Logging
import NIOCore
import NIOPosix
import Processes
import RoleProtocol
import Synchronization
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
        var nursery: Transport<UInt16>?
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
    public func serve(supervisor: Transport<UInt16>) async {
        await withTaskGroup(of: Void.self) { group in
            while let circuit = try? await supervisor.accept() {
                group.addTask { await self.fromSupervisor(circuit) }
            }
            group.cancelAll()
        }
        state.withLock { $0.nursery?.close() }
    }

    private func fromSupervisor(_ circuit: Circuit<UInt16>) async {
        guard let first = try? await circuit.receive() else { return }
        defer { first.descriptors?.close() }
        switch RoleMessage(decoding: first.payload) {
        case .configure(let token):
            state.withLock { $0.credential = token.map(Credential.init(token:)) }
            try? await circuit.send([], end: true)
        case .nurseryLink:
            guard let socket = first.descriptors?.take(0) else { break }
            do {
                let nursery = try await Transport<UInt16>.start(
                    socket: socket, kind: .seqpacket,
                    configuration: RoleLink.configuration(RoleIntent.vaultNursery, side: .opener))
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
            guard let socket = first.descriptors?.take(0) else { break }
            try? await circuit.send([], end: true)
            var log = logger
            log[metadataKey: "worker"] = "\(worker)"
            do {
                let link = try await Transport<UInt16>.start(
                    socket: socket, kind: .seqpacket,
                    configuration: RoleLink.configuration(RoleIntent.workerVault, side: .acceptor))
                log.info("worker linked")
                await serve(worker: link, logger: log)
                log.info("worker link closed", metadata: ["reason": "\(link.failure.map { "\($0)" } ?? "closed")"])
            } catch {
                log.error("worker link failed", metadata: ["error": "\(error)"])
            }
        default:
            logger.error("unexpected message from the supervisor", metadata: ["bytes": "\(first.payload.prefix(8))"])
            try? await circuit.send([], end: true)
        }
    }

    private func serve(worker link: Transport<UInt16>, logger: Logger) async {
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

    private func attachment(_ circuit: Circuit<UInt16>, logger: Logger) async {
        guard let first = try? await circuit.receive() else { return }
        first.descriptors?.close()
        switch RoleMessage(decoding: first.payload) {
        case .check(let token):
            let ok = await authorized(token)
            try? await circuit.send((ok ? RoleMessage.accepted(title: title) : .denied(reason: "bad credential")).encoded, end: true)
        case .attach(let columns, let rows, let token):
            guard await authorized(token) else {
                logger.warning("attachment refused: bad credential")
                try? await circuit.send(RoleMessage.denied(reason: "bad credential").encoded, end: true)
                return
            }
            await relay(circuit, columns: columns, rows: rows, logger: logger)
        default:
            logger.error("malformed first message of an attachment", metadata: ["bytes": "\(first.payload.prefix(8))"])
            try? await circuit.send(RoleMessage.denied(reason: "malformed request").encoded, end: true)
        }
    }

    /// A started shell: its nursery conversation (which reports the exit) and its PTY master.
    private struct Shell {
        var conversation: Circuit<UInt16>
        var pid: Int32
        var master: SystemPackage.FileDescriptor
    }

    private func spawnShell(columns: UInt16, rows: UInt16) async throws -> Shell {
        guard let nursery = state.withLock({ $0.nursery }) else { throw VaultError.noNursery }
        let conversation = try nursery.open()
        try await conversation.send(RoleMessage.spawn(columns: columns, rows: rows).encoded)
        let reply = try await conversation.receive()
        switch RoleMessage(decoding: reply.payload) {
        case .spawned(let pid):
            guard let master = reply.descriptors?.take(0) else { throw VaultError.nursery("no PTY master with the shell") }
            return Shell(conversation: conversation, pid: pid, master: master)
        case .denied(let reason):
            throw VaultError.nursery(reason)
        default:
            reply.descriptors?.close()
            throw VaultError.nursery("unexpected reply")
        }
    }

    private func relay(_ circuit: Circuit<UInt16>, columns: UInt16, rows: UInt16, logger: Logger) async {
        let shell: Shell
        do {
            shell = try await spawnShell(columns: columns, rows: rows)
        } catch {
            logger.error("no shell for an attachment", metadata: ["error": "\(error)"])
            try? await circuit.send(RoleMessage.denied(reason: "cannot start a shell: \(error)").encoded, end: true)
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
            try await circuit.send(RoleMessage.accepted(title: title).encoded)
            let channelFD = dup(master.rawValue)
            guard channelFD >= 0 else { throw SystemCallError(call: "dup", errno: Errno(rawValue: errno)) }
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
            try? await circuit.send(RoleMessage.exited(exit).encoded, end: true)
        }
    }

    enum Ending: String { case shellExited = "shell exited", clientLeft = "client left" }

    /// Relays until the shell's output ends (EOF or EIO on the master: no slave is open) or
    /// the worker ends the conversation. Pause stops reading the terminal, so a shell writing
    /// to a paused client blocks as it would on a stopped real terminal.
    private static func pump(circuit: Circuit<UInt16>, master: SystemPackage.FileDescriptor,
                             inbound: NIOAsyncChannelInboundStream<ByteBuffer>,
                             outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws -> Ending {
        let gate = PauseGate()
        return await withTaskGroup(of: Ending.self) { group in
            group.addTask {
                do {
                    for try await chunk in inbound {
                        await gate.waitWhilePaused()
                        let message = chunk.withUnsafeReadableBytes { RoleMessage.encodeOutput($0) }
                        try await circuit.send(message)
                    }
                } catch {}
                return .shellExited
            }
            group.addTask {
                defer { gate.resume() }
                while let message = try? await circuit.receive() {
                    if message.isEnd && message.payload.isEmpty { break }
                    message.descriptors?.close()
                    switch RoleMessage(decoding: message.payload) {
                    case .input(let bytes):
                        guard (try? await outbound.write(ByteBuffer(bytes: bytes))) != nil else { return .shellExited }
                    case .resize(let columns, let rows):
                        try? PseudoTerminal.resize(master, rows: rows, columns: columns)
                    case .pause: gate.pause()
                    case .resume: gate.resume()
                    default: return .clientLeft
                    }
                    if message.isEnd { break }
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
    private static func exitStatus(of conversation: Circuit<UInt16>) async -> RoleMessage.Exit? {
        await withTaskGroup(of: RoleMessage.Exit?.self) { group in
            group.addTask {
                while let message = try? await conversation.receive() {
                    if case .exited(let exit) = RoleMessage(decoding: message.payload) { return exit }
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

/// Spaces events at least `interval` apart: each caller waits for the next free slot.
final class FailureThrottle: Sendable {
    private let interval: Duration
    private let next = Mutex<ContinuousClock.Instant?>(nil)

    init(interval: Duration) { self.interval = interval }

    func wait() async {
        let now = ContinuousClock.now
        let slot = next.withLock { next in
            let slot = max(now, next ?? now)
            next = slot + interval
            return slot
        }
        if slot > now { await Wait.sleep(for: slot - now) }
    }
}

/// Output flow of one attachment: open, or paused by the client until it resumes.
final class PauseGate: Sendable {
    private let state = Mutex<(paused: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func pause() { state.withLock { $0.paused = true } }

    func resume() {
        let waiters = state.withLock { s in
            defer { s = (false, []) }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func waitWhilePaused() async {
        await withCheckedContinuation { continuation in
            let run = state.withLock { s in
                guard s.paused else { return true }
                s.waiters.append(continuation)
                return false
            }
            if run { continuation.resume() }
        }
    }
}

/// Timers for sandboxed roles: `Task.sleep` goes through libdispatch, whose Linux pool
/// monitor cannot run in a sandbox; NIO's event loop schedules the wake-up instead.
public enum Wait {
    public static func sleep(for duration: Duration) async {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let promise = loop.makePromise(of: Void.self)
        let task = loop.scheduleTask(in: TimeAmount(duration)) { promise.succeed() }
        await withTaskCancellationHandler {
            try? await promise.futureResult.get()
        } onCancel: {
            task.cancel()
            promise.succeed()
        }
    }
}
