import Circuits
import CShim
import Processes
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Throughput of the circuits layer against a raw SOCK_SEQPACKET socketpair.
struct CircuitsBenchmark {
    var quick: Bool
    var onlyPayload: Int?
    var onlyDescriptors: Int?
    var onlyCircuits: Int?
    /// For profiling the circuits path alone; the table then has no ratio.
    var skipRaw = false
    var skipCircuits = false
    /// Credit window per circuit, on both ends. It must cover what is in flight on a circuit:
    /// the socket buffer (208 KiB by default) plus what the reader holds until the consuming
    /// task runs. With sender and receiver each pinned to one core, the receiver's reader and
    /// consumer share that core, and the consumer runs about once per seven 64 KiB messages,
    /// so 1 MiB (16 such messages, granted back half a window at a time) lets the sender run
    /// dry waiting for credit. 2 MiB does not; see README for both.
    var window = Self.defaultWindow
    static let defaultWindow = 2 << 20

    struct Case {
        var payload: Int
        var descriptors: Int
        var circuits: Int
        var messages: Int
    }

    var cases: [Case] {
        var result: [Case] = []
        for payload in [64, 4096, 65536] {
            for descriptors in [0, 1] {
                for circuits in [1, 64] {
                    // Long enough for the steady state, descriptors or not. At 64 KiB the raw
                    // path starts fast and slows for the first tens of thousands of messages
                    // (each one allocates and frees 16 pages; on the development machine about
                    // 165 000 messages/s over 6 400 messages, 130 000 over 12 800, 115 000 over
                    // 25 600, 105 000 over 51 200 and over 102 400), while the circuits path
                    // holds steady; 64 B and 4 KiB do not move with the count. Shorter runs,
                    // and halved counts for descriptor cells, once made the raw path look
                    // faster with a descriptor than without.
                    var messages = payload == 64 ? 200_000 : payload == 4096 ? 100_000 : 51_200
                    if quick { messages /= 10 }
                    if onlyPayload.map({ $0 != payload }) ?? false { continue }
                    if onlyDescriptors.map({ $0 != descriptors }) ?? false { continue }
                    if onlyCircuits.map({ $0 != circuits }) ?? false { continue }
                    result.append(Case(payload: payload, descriptors: descriptors, circuits: circuits, messages: messages))
                }
            }
        }
        return result
    }

    static let intent = "cloister.bench/1"

    static func configuration(_ side: TransportSide, window: Int) -> TransportConfiguration<UInt16> {
        TransportConfiguration(intent: intent, side: side, maxCircuits: 256, reservedBand: 2, reserved: [0: "control"],
                               window: window, maxPayload: 65536, maxDescriptorsPerMessage: 1)
    }

    func run() async throws {
        let repeats = quick ? 1 : 5
        let pinned = CPUPinning.available >= 2 && CPUPinning.pinProcess(to: 0)
        print("circuits benchmark: best of \(repeats) interleaved runs per cell (raw, circuits, raw, …); raw = one SOCK_SEQPACKET socketpair between the same two processes")
        print(pinned ? "sender pinned to CPU 0, receiver to CPU 1 (both paths)" : "processes not pinned (fewer than 2 CPUs)")
        print("circuits over a seqpacket transport, credit window \(window / 1024) KiB per circuit")
        print("")
        print("| payload | fd/msg | circuits | raw msg/s | raw MB/s | circuits msg/s | circuits MB/s | ratio |")
        print("|--------:|-------:|---------:|----------:|---------:|---------------:|--------------:|------:|")
        for c in cases {
            var raw: [Measurement] = []
            var circuits: [Measurement] = []
            for _ in 0..<repeats {
                raw.append(skipRaw ? Measurement(messages: 1, bytes: 1, seconds: 1) : try measureRaw(c))
                circuits.append(skipCircuits ? Measurement(messages: 1, bytes: 1, seconds: 1) : try await measureCircuits(c))
            }
            let r = best(raw), m = best(circuits)
            let size = c.payload >= 1024 ? "\(c.payload / 1024) KiB" : "\(c.payload) B"
            print("| \(size) | \(c.descriptors) | \(c.circuits) | \(fixed(r.messagesPerSecond, 0)) | \(fixed(r.megabytesPerSecond, 1)) | \(fixed(m.messagesPerSecond, 0)) | \(fixed(m.megabytesPerSecond, 1)) | \(fixed(m.megabytesPerSecond / r.megabytesPerSecond, 2)) |")
        }
    }

    /// The fastest run: on a shared machine, slower runs measure the neighbours, not the code.
    private func best(_ ms: [Measurement]) -> Measurement {
        ms.min { $0.seconds < $1.seconds }!
    }

    private func spawnSink(_ mode: String, _ c: Case) throws -> (ChildProcess, FileDescriptor) {
        let (mine, theirs) = try SocketCalls.socketPair(.seqpacket)
        defer { try? theirs.close() }
        let child = try ChildProcess.spawn(ChildProcess.currentExecutable,
                                           arguments: ["sink", mode, "\(c.payload)", "\(c.descriptors)", "\(c.messages)", "\(window)"],
                                           descriptors: [theirs])
        return (child, mine)
    }

    /// The baseline: sendmsg straight into the socketpair, the sink recvmsg's and counts. Both
    /// call the C shim directly with buffers reused across messages, so the baseline pays for
    /// the kernel's work and nothing of ours.
    func measureRaw(_ c: Case) throws -> Measurement {
        let (child, socket) = try spawnSink("raw", c)
        defer { try? socket.close() }
        let payload = [UInt8](repeating: 0x5a, count: c.payload)
        let devNull = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? devNull.close() }
        var fds = [CInt](repeating: devNull.rawValue, count: c.descriptors)
        // Wait for the sink to be ready so process start-up is not timed.
        try RawSocket.receiveAck(socket)
        let start = now()
        try payload.withUnsafeBytes { bytes in
            var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
            for _ in 0..<c.messages {
                let n = cloister_sendmsg_fds(socket.rawValue, &iov, 1, &fds, UInt32(fds.count), CInt(MSG_NOSIGNAL))
                if n < 0 { throw Errno(rawValue: errno) }
            }
        }
        try RawSocket.receiveAck(socket)
        let seconds = now() - start
        _ = try child.wait()
        return Measurement(messages: c.messages, bytes: c.messages * c.payload, seconds: seconds)
    }

    /// The measured path: a transport, `circuits` conversations sending concurrently.
    func measureCircuits(_ c: Case) async throws -> Measurement {
        let (child, socket) = try spawnSink("circuits", c)
        let transport = try await Transport<UInt16>.start(socket: socket, configuration: Self.configuration(.opener, window: window))
        let control = try transport.reserved(0)
        _ = try await control.receive()  // sink ready
        let payload = [UInt8](repeating: 0x5a, count: c.payload)
        let devNull = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? devNull.close() }
        let fds = [FileDescriptor](repeating: devNull, count: c.descriptors)
        let perCircuit = c.messages / c.circuits
        let start = now()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<c.circuits {
                let circuit = try transport.open()
                group.addTask {
                    for i in 0..<perCircuit {
                        try await circuit.send(payload, descriptors: fds, end: i == perCircuit - 1)
                    }
                    _ = try await circuit.receive()  // the sink's end: everything arrived
                }
            }
            try await group.waitForAll()
        }
        let seconds = now() - start
        transport.close()
        _ = try child.wait()
        return Measurement(messages: perCircuit * c.circuits, bytes: perCircuit * c.circuits * c.payload, seconds: seconds)
    }
}

enum RawSocket {
    static func receiveAck(_ socket: FileDescriptor) throws {
        var byte: UInt8 = 0
        let n = read(socket.rawValue, &byte, 1)
        if n != 1 { throw Errno(rawValue: n < 0 ? errno : EPIPE) }
    }

    static func sendAck(_ socket: FileDescriptor) throws {
        var byte: UInt8 = 1
        if write(socket.rawValue, &byte, 1) != 1 { throw Errno(rawValue: errno) }
    }
}

/// The receiving process of a measurement, on the socket at descriptor 3.
enum Sink {
    static func run(_ args: [String]) async throws {
        if CPUPinning.available >= 2 { CPUPinning.pinProcess(to: 1) }
        guard args.count == 5, let payload = Int(args[1]), let descriptors = Int(args[2]), let messages = Int(args[3]),
              let window = Int(args[4]) else {
            print("usage: cloister-bench sink raw|circuits PAYLOAD DESCRIPTORS MESSAGES WINDOW")
            exit(2)
        }
        let socket = FileDescriptor(rawValue: 3)
        switch args[0] {
        case "raw":
            try raw(socket, payload: payload, descriptors: descriptors, messages: messages)
        case "circuits":
            try await circuits(socket, window: window)
        default:
            exit(2)
        }
    }

    static func raw(_ socket: FileDescriptor, payload: Int, descriptors: Int, messages: Int) throws {
        var buffer = [UInt8](repeating: 0, count: payload + 1)
        var fds = [CInt](repeating: -1, count: max(descriptors, 1))
        try RawSocket.sendAck(socket)
        for _ in 0..<messages {
            var nfds: UInt32 = 0, flags: CInt = 0, foreign: CInt = 0
            let n = buffer.withUnsafeMutableBytes { b in
                var iov = iovec(iov_base: b.baseAddress, iov_len: b.count)
                return cloister_recvmsg_fds(socket.rawValue, &iov, 1, &fds, UInt32(fds.count), &nfds, &flags, &foreign, 0)
            }
            if n != payload { throw Errno(rawValue: n < 0 ? errno : EMSGSIZE) }
            for i in 0..<Int(nfds) { close(fds[i]) }
        }
        try RawSocket.sendAck(socket)
    }

    static func circuits(_ socket: FileDescriptor, window: Int) async throws {
        let transport = try await Transport<UInt16>.start(socket: socket,
                                                          configuration: CircuitsBenchmark.configuration(.acceptor, window: window))
        try await transport.reserved(0).send([1])
        await withThrowingTaskGroup(of: Void.self) { group in
            while let circuit = try? await transport.accept() {
                group.addTask {
                    while !(try await circuit.receiveAvailable()).contains(where: \.isEnd) {}
                    try await circuit.send([], end: true)
                }
            }
        }
    }
}
