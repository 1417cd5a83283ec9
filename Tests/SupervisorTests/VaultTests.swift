import Circuits
import Foundation
import NIOCore
import NIOPosix
import Processes
import RoleProtocol
import Sandbox
import Supervisor
import Synchronization
import SystemPackage
import TestSupport
import Vault
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The real, sandboxed vault with this test as the worker, playing one an attacker controls:
/// it sends whatever it likes on its link, and still gets no shell without the credential.
final class VaultTests: XCTestCase {
    static let secret = "admin:correct-horse"

    final class Started: Sendable {
        let launched: RoleLauncher.Launched
        let link: RoleChannelTransport
        let loop: MultiThreadedEventLoopGroup
        let violations: Violations
        init(launched: RoleLauncher.Launched, link: RoleChannelTransport, loop: MultiThreadedEventLoopGroup, violations: Violations) {
            (self.launched, self.link, self.loop, self.violations) = (launched, link, loop, violations)
        }
    }

    final class Violations: Sendable {
        let names = Mutex<[String]>([])
    }

    private func startVault() async throws -> Started {
        let violations = Violations()
        let launched = try await RoleLauncher.start(
            executable: cloisterExecutable, settings: VaultSettings(), policy: packageRoot + "/policies/vault.json", mode: .report,
            user: "nobody", group: "nogroup", build: cloisterBuildID
        ) { event in violations.names.withLock { $0.append(event.syscall) } }
        // As the supervisor: the credential, then a link whose other end is ours.
        try await launched.transport.open().tell(SupervisorToVault.configure(credential: Credential(userAndPassword: Self.secret).token))
        let (vaultEnd, workerEnd) = try SocketCalls.socketPair(Link.workerVault.socketKind)
        try await launched.transport.open().tell(SupervisorToVault.workerLink(worker: 0), descriptors: [vaultEnd])
        try vaultEnd.close()
        let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let link = try await Link.workerVault.start(socket: workerEnd, side: .opener, on: loop.next(), build: cloisterBuildID).get()
        return Started(launched: launched, link: link, loop: loop, violations: violations)
    }

    /// One conversation as a worker would start it; the vault's first answer (nil: it ended
    /// the conversation without one).
    private static func ask(_ link: RoleChannelTransport, _ payload: [UInt8]) async throws -> VaultToWorker? {
        let answered = link.eventLoop.makePromise(of: [UInt8].self)
        try await link.eventLoop.submit {
            let circuit = try link.open()
            circuit.onMessage = { reply, _ in
                answered.succeed(Array(buffer: reply))
                circuit.abandon()
            }
            circuit.onFailure = { answered.fail($0) }
            XCTAssertTrue(try circuit.send(payload))
        }.get()
        let reply = try await answered.futureResult.get()
        return reply.isEmpty ? nil : try VaultToWorker(decoding: reply, descriptors: 0)
    }

    private static func ask(_ link: RoleChannelTransport, _ message: WorkerToVault) async throws -> VaultToWorker? {
        try await ask(link, message.encoded)
    }

    private func stop(_ started: Started) async throws {
        try await started.link.eventLoop.submit { started.link.close() }.get()
        try await started.loop.shutdownGracefully()
        started.launched.transport.close()
        _ = await started.launched.child.termination()
        started.launched.monitor.waitUntilDone()
        await started.launched.output.value
    }

    func testAWorkerWithoutTheCredentialGetsNoShell() async throws {
        let vault = try await startVault()
        let wrong = Array(Credential(userAndPassword: "admin:guess").token)
        let refused = VaultToWorker.refused(.badCredential)
        let attachWrong = try await Self.ask(vault.link, .attach(AttachRequest(columns: 80, rows: 24, token: wrong)))
        XCTAssertEqual(attachWrong, refused)
        let attachEmpty = try await Self.ask(vault.link, .attach(AttachRequest(columns: 80, rows: 24, token: [])))
        XCTAssertEqual(attachEmpty, refused)
        let checkWrong = try await Self.ask(vault.link, .check(token: wrong))
        XCTAssertEqual(checkWrong, refused)
        // Skipping the attach, or sending what no worker would, gets nothing either: a
        // message of another link, an unknown kind, a short attach, an oversized token.
        let inputFirst = try await Self.ask(vault.link, .input(Array("id\r".utf8)))
        XCTAssertEqual(inputFirst, .refused(.malformedRequest))
        for garbage: [UInt8] in [[0xff, 0x00, 0x01], SupervisorToVault.configure(credential: nil).encoded, [0x41, 0, 80],
                                 WorkerToVault.check(token: Array(repeating: 0x41, count: LinkLimits.token + 1)).encoded] {
            let answer = try await Self.ask(vault.link, garbage)
            XCTAssertEqual(answer, .refused(.malformedRequest), "\(garbage.prefix(8))")
        }
        // The right credential passes the check: what stops it here is only that this vault
        // has no nursery, so the refusals above were the credential's doing.
        let right = Credential(userAndPassword: Self.secret).token
        let attachRight = try await Self.ask(vault.link, .attach(AttachRequest(columns: 80, rows: 24, token: right)))
        XCTAssertEqual(attachRight, .refused(.noTerminal))
        let checkRight = try await Self.ask(vault.link, .check(token: right))
        XCTAssertEqual(checkRight, .accepted(title: "cloister"))
        XCTAssertEqual(vault.violations.names.withLock { $0 }, [])
        try await stop(vault)
    }

    /// Guesses sent in parallel on the link still get at most ten answers a second.
    /// A worker that passes command arguments the operator did not allow gets no shell.
    func testCommandArgumentsNotAllowedAreRefused() async throws {
        let vault = try await startVault()
        let right = Credential(userAndPassword: Self.secret).token
        let reply = try await Self.ask(vault.link, .attach(AttachRequest(columns: 80, rows: 24, token: right,
                                                                         arguments: [Array("--rcfile".utf8)])))
        XCTAssertEqual(reply, .refused(.malformedRequest))
        XCTAssertEqual(vault.violations.names.withLock { $0 }, [])
        try await stop(vault)
    }

    func testGuessesFromAWorkerAreThrottled() async throws {
        let vault = try await startVault()
        let guesses = 12
        let start = ContinuousClock.now
        let answers = try await withThrowingTaskGroup(of: VaultToWorker?.self) { group in
            for i in 0..<guesses {
                group.addTask {
                    try await Self.ask(vault.link, .check(token: Credential(userAndPassword: "admin:\(i)").token))
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(answers, Array(repeating: .refused(.badCredential), count: guesses))
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(100 * (guesses - 1) * 9 / 10), "\(guesses) guesses answered in \(elapsed)")
        try await stop(vault)
    }

    func testCredentialComparison() {
        let credential = Credential(userAndPassword: Self.secret)
        XCTAssertEqual(String(decoding: credential.token, as: UTF8.self), Data(Self.secret.utf8).base64EncodedString())
        XCTAssertTrue(credential.matches(credential.token))
        XCTAssertFalse(credential.matches([]))
        XCTAssertFalse(credential.matches(Array(credential.token.dropLast())))
        XCTAssertFalse(credential.matches(credential.token + [0x41]))
        var flipped = credential.token
        flipped[0] ^= 1
        XCTAssertFalse(credential.matches(flipped))
        XCTAssertFalse(Credential(token: []).matches([]), "an empty credential lets nobody in")
        XCTAssertFalse(Credential(token: []).matches(Array("x".utf8)), "…whatever is presented, and does not trap")
        // The lengths are compared whole: a token that is the credential repeated, longer by
        // a multiple of 256 bytes, agrees with it in every byte the comparison cycles over.
        for extra in [256, 512, 65536] {
            let repeated = (0..<(credential.token.count + extra)).map { credential.token[$0 % credential.token.count] }
            XCTAssertFalse(credential.matches(repeated), "\(extra) bytes longer")
        }
    }
}
