import ArgumentParser
import Circuits
import SystemPackage

/// A peer for multi-process tests of the circuits layer, on the transport at descriptor 3.
/// For every conversation the opener starts: a message carrying a descriptor has its payload
/// written into that descriptor and is answered with the byte count; any other message is
/// echoed. The conversation ends when the opener's does.
struct CircuitsPeerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "circuits-peer", shouldDisplay: false)

    @Option(help: "Protocol intent to declare.") var intent: String = "cloister.test-peer/1"

    func run() async throws {
        let transport = try await Transport<UInt16>.start(
            socket: FileDescriptor(rawValue: 3),
            configuration: .init(intent: intent, side: .acceptor, reservedBand: 2, reserved: [0: "health"]))
        let health = try transport.reserved(0)
        await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    let ping = try await health.receive()
                    try await health.send(ping.payload)
                }
            }
            while let circuit = try? await transport.accept() {
                group.addTask { try await Self.serve(circuit) }
            }
            group.cancelAll()
        }
    }

    static func serve(_ circuit: Circuit<UInt16>) async throws {
        while true {
            let message = try await circuit.receive()
            if let fds = message.descriptors, let fd = fds.take(0) {
                defer { try? fd.close() }
                let written = try message.payload.withUnsafeBytes { try fd.writeAll($0) }
                try await circuit.send(Array("wrote \(written)".utf8), end: message.isEnd)
            } else {
                try await circuit.send(message.payload, end: message.isEnd)
            }
            if message.isEnd { return }
        }
    }
}
