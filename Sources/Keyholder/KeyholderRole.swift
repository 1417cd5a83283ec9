import Circuits
import Logging
import NIOCore
import NIOPosix
import RoleProtocol
import Sandbox
import Synchronization
import SystemCalls
import SystemPackage

/// The keyholder process: reads the TLS key before it is confined (as the user that owns the
/// file), then, sandboxed under its own profile, signs what the workers' TLS handshakes need
/// signed, over a link per worker the supervisor gives it. It never sees a client byte: a
/// worker sends it the bytes TLS wants signed and gets the signature back.
public enum KeyholderRole {
    /// Reads the key, then confines the process; before the first `await`, single-threaded.
    public static func confine(_ sandbox: RoleSandbox, keyFile: String, certificateFile: String) throws -> (ConfinedRole, SigningKey) {
        let key = try SigningKey(keyFile: keyFile, certificateFile: certificateFile)
        return (try sandbox.confine(role: RoleDeclaration.keyholder.role.rawValue, openFileLimit: 4160), key)
    }

    /// Threads made before the filter: the event loop (worker links, Swift concurrency) and
    /// the supervisor link's reader and writer. No reserve.
    public static func run(key: SigningKey, budget: SigningBudget.Limits, confined: ConfinedRole) async throws {
        RoleLog.bootstrap()
        let log = RoleLog.logger(.keyholder)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let supervisor = try await Link.supervisorKeyholder.start(socket: Link.inheritedTransport, side: .acceptor)
        let steps = try confined.seal(threads: RoleDeclaration.keyholder.threads, reserve: RoleDeclaration.keyholder.reserve)
        log.info("sandbox entered", metadata: ["steps": "\(steps.joined(separator: "; "))", "key": "\(key.kind)"])
        let signer = Signer(key: key, limits: budget, loop: loop, logger: log)
        try await ControlCircuit.serve(supervisor, counters: signer.counters) { group in
            while let circuit = try? await supervisor.accept() {
                group.addTask { await signer.fromSupervisor(circuit) }
            }
        }
    }
}

/// What the keyholder counts, in its heartbeat replies.
public enum KeyholderCounter: Int, CaseIterable, Sendable {
    case signed, refusedRate, refusedRequest
}

/// Serves the worker links: one signature per conversation, within each worker's budget.
final class Signer: Sendable {
    let key: SigningKey
    let limits: SigningBudget.Limits
    let loop: EventLoop
    let logger: Logger
    let counters = RoleCounters(count: KeyholderCounter.allCases.count)
    /// Per worker id: its budget and counts; on `loop`.
    private let workers = Mutex<[UInt32: SigningBudget]>([:])

    init(key: SigningKey, limits: SigningBudget.Limits, loop: EventLoop, logger: Logger) {
        (self.key, self.limits, self.loop, self.logger) = (key, limits, loop, logger)
    }

    func fromSupervisor(_ circuit: RoleCircuit) async {
        guard let received = await circuit.firstMessage(SupervisorToKeyholder.self, logger: logger) else { return }
        switch received.message {
        case .counts:
            let counts = workers.withLock { $0.map { KeyholderToSupervisor.Count(worker: $0.key, signed: $0.value.signed, refused: $0.value.refused) } }
            try? await circuit.send(KeyholderToSupervisor.counts(counts.sorted { $0.worker < $1.worker }), end: true)
        case .workerLink(let worker):
            var log = logger
            log[metadataKey: "worker"] = "\(worker)"
            workers.withLock { $0[worker] = SigningBudget(limits) }
            // Ended first: the supervisor hands the worker its end only then, and the link's
            // handshake needs both.
            try? await circuit.send([], end: true)
            do {
                let link = try await Link.workerKeyholder.start(socket: received.descriptors!.take(0)!, side: .acceptor, on: loop) {
                    [self, log] conversation in serve(conversation, worker: worker, logger: log)
                }.get()
                try await loop.submit { [self, log] in
                    link.onClose = { reason in
                        self.workers.withLock { _ = $0.removeValue(forKey: worker) }
                        log.info("worker link closed", metadata: ["reason": "\(reason)"])
                    }
                }.get()
                log.info("worker linked")
            } catch {
                workers.withLock { _ = $0.removeValue(forKey: worker) }
                log.error("worker link failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// One signature: the request is checked (its layout and size, the scheme against the
    /// key's), the worker's budget charged, then the signature made on the loop.
    private func serve(_ circuit: RoleChannelCircuit, worker: UInt32, logger: Logger) {
        circuit.onMessage = { [self] payload, _ in
            circuit.onMessage = { _, _ in }
            let answer: KeyholderToWorker
            switch try? WorkerToKeyholder(decoding: Array(buffer: payload), descriptors: 0) {
            case .sign(let scheme, let data) where !Self.isHandshakeInput(data):
                counters.add(1, to: KeyholderCounter.refusedRequest.rawValue)
                unsigned(worker, charged: false)
                logger.warning("signature refused: not what a TLS handshake signs", metadata: ["bytes": "\(data.count)", "scheme": "\(scheme)"])
                answer = .refused("not what a TLS handshake signs")
            case .sign(let scheme, let data):
                if !charge(worker) {
                    counters.add(1, to: KeyholderCounter.refusedRate.rawValue)
                    logger.warning("signature refused: over the worker's rate", metadata: [
                        "rate_per_second": "\(limits.perSecond)", "burst": "\(limits.burst)"])
                    answer = .refused("over the rate of \(limits.perSecond) signatures a second")
                } else {
                    do {
                        answer = .signature(try key.sign(scheme: scheme, data: data))
                        counters.add(1, to: KeyholderCounter.signed.rawValue)
                    } catch {
                        counters.add(1, to: KeyholderCounter.refusedRequest.rawValue)
                        unsigned(worker, charged: true)
                        logger.warning("signature refused", metadata: ["error": "\(error)"])
                        answer = .refused("\(error)")
                    }
                }
            case nil:
                counters.add(1, to: KeyholderCounter.refusedRequest.rawValue)
                unsigned(worker, charged: false)
                logger.warning("signature refused: not a signing request", metadata: ["bytes": "\(payload.readableBytes)"])
                answer = .refused("not a signing request")
            }
            _ = try? circuit.send(answer.encoded, end: true)
        }
    }

    /// Only what a TLS server signs, so that a worker cannot use the key for anything else
    /// (a certificate request, a token): TLS 1.3's CertificateVerify input (64 spaces, the
    /// server's context string, a transcript hash of 32 or 48 bytes), or TLS 1.2's
    /// ServerKeyExchange for ECDHE (both randoms, a named curve and its public point).
    static func isHandshakeInput(_ data: [UInt8]) -> Bool {
        let context = Array("TLS 1.3, server CertificateVerify".utf8) + [0]
        if data.count == 64 + context.count + 32 || data.count == 64 + context.count + 48 {
            if data.prefix(64).allSatisfy({ $0 == 0x20 }) && Array(data[64..<(64 + context.count)]) == context { return true }
        }
        // client_random, server_random, curve_type named_curve (3), the curve, the point.
        return data.count >= 68 && data[64] == 3 && data.count == 68 + Int(data[67])
    }

    /// Takes one signature from the worker's budget (counted as made); false when it is spent
    /// (counted as refused).
    private func charge(_ worker: UInt32) -> Bool {
        workers.withLock { budgets in
            guard var budget = budgets[worker] else { return false }
            defer { budgets[worker] = budget }
            return budget.take(now: .now)
        }
    }

    /// A request refused after all: counted as refused, and no longer as made if `charged`.
    private func unsigned(_ worker: UInt32, charged: Bool) {
        workers.withLock { budgets in
            budgets[worker]?.refused += 1
            if charged { budgets[worker]?.signed -= 1 }
        }
    }
}

/// A worker's signatures: a token bucket (`Limits.perSecond`, up to `Limits.burst` saved up),
/// and the counts `ctl workers` shows.
public struct SigningBudget: Sendable {
    public struct Limits: Sendable {
        public var perSecond: Int
        public var burst: Int
        public init(perSecond: Int, burst: Int) {
            (self.perSecond, self.burst) = (perSecond, burst)
        }
    }

    let limits: Limits
    private var tokens: Double
    private var last: ContinuousClock.Instant?
    public internal(set) var signed: UInt64 = 0
    public internal(set) var refused: UInt64 = 0

    public init(_ limits: Limits) {
        self.limits = limits
        tokens = Double(limits.burst)
    }

    /// One signature, if the budget has one.
    public mutating func take(now: ContinuousClock.Instant) -> Bool {
        if let last {
            let elapsed = now - last
            tokens = min(Double(limits.burst), tokens + elapsed.inSeconds * Double(limits.perSecond))
        }
        last = now
        guard tokens >= 1 else {
            refused += 1
            return false
        }
        tokens -= 1
        signed += 1
        return true
    }
}
