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

/// The PTY vault: decides who may have a shell, owns every PTY master and session, and
/// relays between each session and the workers serving its clients. It runs sandboxed (no
/// exec, no files); shells come from the nursery, which hands back the master of each new
/// terminal.
///
/// An attachment is one client's use of one session: the worker opens a circuit and presents
/// the client's credential, window size and, to join a session, its id and a secret. The
/// vault checks them (constant time, wrong ones throttled), starts a session (a shell on a new
/// PTY from the nursery) or finds the one asked for, and relays until the shell exits (the
/// attachment ends with its status) or the client leaves. A session outlives its clients: with
/// none attached it lingers for `SessionSettings.linger`, then is hung up (the master is
/// closed, so the shell's session gets SIGHUP).
public final class Vault: Sendable {
    private struct State {
        var credential: Credential?
        /// Instead of `credential`: web users checked by their passwords' hashes.
        var users: PasswordCheck?
        var nursery: RoleTransport?
        var sessions: [String: Session] = [:]
        /// Attached clients, counted from admission (before a new session's shell starts).
        var attachments = 0
        var attachmentsStarted: UInt64 = 0
    }

    private let state = Mutex(State())
    private let throttle = FailureThrottle(interval: .milliseconds(100))
    private let logger: Logger
    private let title: String
    private let settings: SessionSettings

    public init(logger: Logger, title: String = "cloister", settings: SessionSettings = .init()) {
        self.logger = logger
        self.title = title
        self.settings = settings
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
            state.withLock {
                $0.credential = token.map(Credential.init(token:))
                $0.users = nil
            }
            try? await circuit.send([], end: true)
        case .configureUsers(let users):
            state.withLock {
                $0.users = PasswordCheck(users: users)
                $0.credential = nil
            }
            logger.info("web users configured", metadata: ["users": "\(users.hashes.count)"])
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
        case .listSessions:
            let sessions = state.withLock { $0.sessions.values.sorted { $0.created < $1.created } }
            let summaries = sessions.map { $0.summary() }
            var page = 0
            repeat {
                let slice = Array(summaries.dropFirst(page * VaultToSupervisor.pageSize).prefix(VaultToSupervisor.pageSize))
                guard (try? await circuit.send(VaultToSupervisor.sessions(slice))) != nil else { break }
                page += 1
            } while page * VaultToSupervisor.pageSize < summaries.count
            try? await circuit.send([], end: true)
        case .kick(let id, let client):
            let session = state.withLock { $0.sessions[id] }
            let found = session?.kick(client.map(Int.init)) ?? false
            logger.info("kick", metadata: ["session": "\(id)", "client": "\(client.map { "\($0)" } ?? "all")", "found": "\(found)"])
            try? await circuit.send(VaultToSupervisor.done(found: found), end: true)
        case .attachmentCount:
            let (current, started) = state.withLock { (UInt32($0.attachments), $0.attachmentsStarted) }
            try? await circuit.send(VaultToSupervisor.attachments(current: current, started: started), end: true)
        case .hangUp(let id):
            let session = state.withLock { $0.sessions[id] }
            session?.hangUp()
            logger.info("hang-up", metadata: ["session": "\(id)", "found": "\(session != nil)"])
            try? await circuit.send(VaultToSupervisor.done(found: session != nil), end: true)
        case .workerLink(let worker):
            let socket = received.descriptors!.take(0)!
            try? await circuit.send([], end: true)
            var log = logger
            log[metadataKey: "worker"] = "\(worker)"
            do {
                let link = try await Link.workerVault.start(socket: socket, side: .acceptor)
                log.info("worker linked")
                await serve(worker: link, id: worker, logger: log)
                log.info("worker link closed", metadata: ["reason": "\(link.failure.map { "\($0)" } ?? "closed")"])
            } catch {
                log.error("worker link failed", metadata: ["error": "\(error)"])
            }
        }
    }

    private func serve(worker link: RoleTransport, id worker: UInt32, logger: Logger) async {
        await withTaskGroup(of: Void.self) { group in
            while let circuit = try? await link.accept() {
                group.addTask { await self.attachment(circuit, worker: worker, logger: logger) }
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
        await authorizedUser(token) != nil
    }

    /// As `authorized`, with the web user it names: the proxy's header's name, or the users
    /// file's user; "" when there is one credential or none.
    private func authorizedUser(_ token: [UInt8]) async -> String? {
        // The proxy in front authenticated the user and named them; no credential exists.
        if settings.authHeader { return Self.isUserName(token) ? String(decoding: token, as: UTF8.self) : nil }
        let (credential, users) = state.withLock { ($0.credential, $0.users) }
        if let users {
            if let user = users.remembered(token) { return user }
            // A hash takes tens of milliseconds: off the event loops.
            if let user = try? await onOwnThread({ users.user(for: token) }) { return user }
        } else {
            guard let credential else { return "" }
            if credential.matches(token) { return "" }
        }
        if !token.isEmpty { await throttle.wait() }
        return nil
    }

    /// A name a proxy's header may give: 1 to `LinkLimits.userName` bytes of UTF-8 without
    /// control characters (it goes into the shell's environment).
    static func isUserName(_ bytes: [UInt8]) -> Bool {
        guard (1...LinkLimits.userName).contains(bytes.count), let text = String(validating: bytes, as: UTF8.self) else { return false }
        return text.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value != 0x7f }
    }

    private func attachment(_ circuit: RoleCircuit, worker: UInt32, logger: Logger) async {
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
        case .attach(let request):
            guard let webUser = await authorizedUser(request.token) else {
                logger.warning("attachment refused: bad credential")
                try? await circuit.send(VaultToWorker.refused(.badCredential), end: true)
                return
            }
            // Arguments only where the operator allowed them, and only for a new session: a
            // worker that sends them otherwise is not following the protocol.
            guard request.arguments.isEmpty || (settings.urlArguments && request.session == nil) else {
                logger.error("attachment refused: command arguments that are not allowed")
                try? await circuit.send(VaultToWorker.refused(.malformedRequest), end: true)
                return
            }
            // Admitted before any shell starts, so a refused client costs none.
            let maximum = settings.maxAttachments
            let admitted = state.withLock { s in
                guard maximum == 0 || s.attachments < maximum else { return false }
                s.attachments += 1
                s.attachmentsStarted += 1
                return true
            }
            guard admitted else {
                logger.warning("attachment refused: as many clients as allowed are attached", metadata: ["max": "\(maximum)"])
                try? await circuit.send(VaultToWorker.refused(.busy), end: true)
                return
            }
            defer { state.withLock { $0.attachments -= 1 } }
            let session: Session, writer: Bool
            if let wanted = request.session {
                guard let (found, mayWrite) = await join(wanted) else {
                    logger.warning("attachment refused: no session with that id and secret")
                    try? await circuit.send(VaultToWorker.refused(.badCredential), end: true)
                    return
                }
                (session, writer) = (found, mayWrite && !request.readonly)
            } else {
                do {
                    session = try await startSession(columns: request.columns, rows: request.rows, arguments: request.arguments,
                                                     user: webUser.isEmpty ? nil : Array(webUser.utf8), logger: logger)
                } catch {
                    logger.error("no shell for an attachment", metadata: ["error": "\(error)"])
                    try? await circuit.send(VaultToWorker.refused(.noTerminal), end: true)
                    return
                }
                writer = !request.readonly
            }
            await serve(circuit, on: session, writer: writer && !settings.readOnly, worker: worker, offset: request.offset,
                        logger: logger)
        case .input, .resize, .pause, .resume:
            logger.error("an attachment began without attach or check", metadata: ["first": "\(first!)"])
            try? await circuit.send(VaultToWorker.refused(.malformedRequest), end: true)
        case nil:
            return  // ended before asking anything
        }
    }

    /// The session `wanted` names, if the secret is one of its two: whether it lets the
    /// client write. A wrong id or secret is answered like a wrong credential, throttled with
    /// them, and says nothing about whether the id exists.
    private func join(_ wanted: (id: [UInt8], secret: [UInt8])) async -> (Session, writer: Bool)? {
        let session = state.withLock { $0.sessions[String(decoding: wanted.id, as: UTF8.self)] }
        // Both secrets are compared whatever the first gives, and an unknown id is compared
        // with secrets of the same length, so timing tells nothing either.
        let (write, read) = session.map { ($0.writeSecret, $0.readSecret) } ?? (Self.unknownSecret, Self.unknownSecret)
        let writes = Credential(token: Array(write.utf8)).matches(wanted.secret) && session != nil
        let watches = Credential(token: Array(read.utf8)).matches(wanted.secret) && session != nil
        guard let session, !session.isFinished, writes || watches else {
            await throttle.wait()
            return nil
        }
        return (session, writes)
    }

    private static let unknownSecret = SessionToken.random(bytes: 18)

    /// A started shell: its nursery conversation (which reports the exit) and its PTY master.
    private struct Shell {
        var conversation: RoleCircuit
        var pid: Int32
        var master: SystemPackage.FileDescriptor
    }

    private func spawnShell(columns: UInt16, rows: UInt16, arguments: [[UInt8]], user: [UInt8]?) async throws -> Shell {
        guard let nursery = state.withLock({ $0.nursery }) else { throw VaultError.noNursery }
        let conversation = try nursery.open()
        try await conversation.send(VaultToNursery.spawn(columns: columns, rows: rows, arguments: arguments, user: user))
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

    /// Starts a shell and the session around it; the session's I/O runs on its own until the
    /// shell exits or the session is hung up.
    private func startSession(columns: UInt16, rows: UInt16, arguments: [[UInt8]], user: [UInt8]?, logger: Logger) async throws -> Session {
        let shell = try await spawnShell(columns: columns, rows: rows, arguments: arguments, user: user)
        // Our own copy of the master, for resizes: NIO closes its descriptors whenever the
        // channel goes, and a resize must never reach whatever reused that number. Holding it
        // also keeps the terminal up until the session has finished.
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            let channelFD = try valueOrErrno("dup") { dup(shell.master.rawValue) }
            do {
                channel = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    // An idle shell's terminal reads a prompt; bulk output grows the reads to 64 KiB.
                    .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536))
                    .takingOwnershipOfDescriptor(inputOutput: channelFD) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                    }
            } catch {
                close(channelFD)  // not taken over: still ours
                throw error
            }
        } catch {
            try? shell.master.close()
            throw error
        }
        let session = Session(shell: shell.pid, master: shell.master, ringBytes: settings.ringBytes)
        let count = state.withLock { s in
            s.sessions[session.id] = session
            return s.sessions.count
        }
        var log = logger
        log[metadataKey: "session"] = "\(session.id)"
        log[metadataKey: "shell"] = "\(shell.pid)"
        log.info("session started", metadata: ["columns": "\(columns)", "rows": "\(rows)", "open_sessions": "\(count)"])
        Task { await self.run(session, channel: channel, shell: shell, logger: log) }
        return session
    }

    /// A session's I/O: the PTY's output into the ring, writers' input into the PTY, until
    /// the output ends (the shell exited) or the session is hung up; then the terminal is
    /// closed and the shell's status awaited.
    private func run(_ session: Session, channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>, shell: Shell, logger: Logger) async {
        try? await channel.executeThenClose { inbound, outbound in
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    do {
                        for try await chunk in inbound {
                            session.append(Array(buffer: chunk))
                            await session.gate.waitWhilePaused()
                            await session.waitForWriters()
                        }
                    } catch {}
                }
                group.addTask {
                    for await bytes in session.inputs {
                        guard (try? await outbound.write(ByteBuffer(bytes: bytes))) != nil else { break }
                    }
                }
                await group.next()
                group.cancelAll()
            }
        }
        // A session ended by the vault, not by its shell: the operator's signal first, if it is
        // not the SIGHUP the terminal sends.
        if session.isHungUp && settings.endSignal != SIGHUP {
            try? await shell.conversation.send(VaultToNursery.signal(settings.endSignal))
        }
        // The channel has closed its copies; closing ours, the last, hangs up the terminal,
        // and the shell's session gets SIGHUP if it is still there.
        session.closeMaster()
        let exit = await Self.exitStatus(of: shell.conversation)
        session.finish(exit)
        let left = state.withLock { s in
            s.sessions[session.id] = nil
            return s.sessions.count
        }
        logger.info("session ended", metadata: ["shell_exit": "\(exit.map { "\($0)" } ?? "unknown")", "open_sessions": "\(left)"])
    }

    enum Ending: String { case shellExited = "shell exited", clientLeft = "client left", tooSlow = "too slow", kicked = "kicked" }

    /// One client on a session: output from its offset one way, its commands the other (a
    /// viewer's are ignored and counted), until the shell exits, the client leaves, or (by
    /// the operator's policy) it falls behind what the ring holds.
    private func serve(_ circuit: RoleCircuit, on session: Session, writer: Bool, worker: UInt32, offset: UInt64?,
                       logger: Logger) async {
        var log = logger
        log[metadataKey: "session"] = "\(session.id)"
        log[metadataKey: "mode"] = "\(writer ? "writer" : "viewer")"
        // The operator's kick cancels the attachment's work; the vault then says why.
        let kicked = KickSwitch()
        let start = session.attached(writer: writer, worker: worker, from: offset) { kicked.pull() }
        let client = start.client
        log[metadataKey: "client"] = "\(client)"
        let open = state.withLock { $0.attachments }
        log.info("attachment started", metadata: ["offset": "\(start.offset)", "skipped": "\(start.skipped)",
                                                  "open_attachments": "\(open)"])
        let settings = self.settings
        let ending: Ending, last: VaultToWorker?
        do {
            try await circuit.send(VaultToWorker.attached(session.info(title: title, writer: writer, offset: start.offset,
                                                                       skipped: start.skipped)))
            let work = Task { await withTaskGroup(of: (Ending, last: VaultToWorker?).self) { group in
                group.addTask {
                    var cursor = start.offset
                    while true {
                        switch await session.next(after: cursor, limit: 64 * 1024) {
                        case .output(let at, let bytes, let skipped):
                            if skipped > 0 {
                                session.countSlowConsumer()
                                guard settings.slowConsumer == .resync else { return (.tooSlow, .refused(.tooSlow)) }
                                guard (try? await circuit.send(VaultToWorker.resynced(offset: at, skipped: skipped))) != nil else {
                                    return (.clientLeft, nil)
                                }
                            }
                            let message = bytes.withUnsafeBytes { VaultToWorker.encodeOutput($0) }
                            guard (try? await circuit.send(message)) != nil else { return (.clientLeft, nil) }
                            cursor = at + UInt64(bytes.count)
                            session.advance(client, to: cursor)
                        case .finished(let exit):
                            if Task.isCancelled { return (.clientLeft, nil) }
                            return (.shellExited, exit.map { .exited($0) })
                        }
                    }
                }
                group.addTask {
                    defer { if writer { session.resume() } }
                    // A worker that sends what does not belong on an attachment ends it.
                    while let received = try? await circuit.receive(WorkerToVault.self) {
                        switch received.message {
                        case .input(let bytes) where writer: session.write(bytes)
                        case .resize(let columns, let rows) where writer: session.resize(rows: rows, columns: columns)
                        case .pause where writer: session.pause()
                        case .resume where writer: session.resume()
                        case .input, .resize, .pause, .resume: session.countIgnored()
                        case .attach, .check: return (.clientLeft, nil)
                        }
                        if received.isEnd { break }
                    }
                    return (.clientLeft, nil)
                }
                let first = await group.next() ?? (.clientLeft, nil)
                group.cancelAll()
                return first
            } }
            kicked.arm { work.cancel() }
            let outcome = await work.value
            (ending, last) = kicked.pulled ? (.kicked, .refused(.kicked)) : outcome
        } catch {
            log.error("attachment failed", metadata: ["error": "\(error)"])
            (ending, last) = (.clientLeft, nil)
        }
        log.info("attachment ended", metadata: ["ending": "\(ending.rawValue)"])
        if let epoch = session.detached(client) { linger(session, from: epoch, logger: log) }
        if let last { await Self.sendLast(last, on: circuit) }
    }

    /// The attachment's last word (why it ended), after the session has let the client go:
    /// a client that stopped reading (the one an operator kicks or the policy drops) has
    /// left the circuit without credit, so the word waits a little, then the circuit is
    /// abandoned and the worker closes the connection without it.
    private static func sendLast(_ message: VaultToWorker, on circuit: RoleCircuit) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await circuit.send(message, end: true) }
            group.addTask { await Wait.sleep(for: .seconds(5)) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Hangs up a session nobody attaches to within the linger.
    private func linger(_ session: Session, from epoch: Int, logger: Logger) {
        let linger = settings.linger
        Task {
            await Wait.sleep(for: linger)
            guard session.idle(since: epoch), !session.isFinished else { return }
            logger.info("session hung up: nobody attached within the linger", metadata: ["linger": "\(linger)"])
            session.hangUp()
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
