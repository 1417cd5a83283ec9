import SystemCalls

/// Why a transport or circuit failed. Protocol violations by the peer close the transport;
/// the case names the cause and carries what was seen.
public enum CircuitError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A frame shorter than the fixed header.
    case truncatedHeader(received: Int, required: Int)
    /// A frame names a circuit id at or above the transport's `maxCircuits`.
    case circuitOutOfRange(id: UInt64, maxCircuits: UInt64)
    /// A frame kind this build does not know.
    case unknownKind(UInt8)
    /// A payload larger than the receiver allows (declared or actual).
    case oversized(length: Int, limit: Int)
    /// Descriptors arrived where none may come: on a handshake or credit frame, or more than
    /// the transport allows per message.
    case unexpectedDescriptors(count: Int, context: String)
    /// The frame header declared a different number of descriptors than arrived.
    case descriptorCountMismatch(declared: Int, received: Int)
    /// The kernel truncated ancillary data (MSG_CTRUNC); the descriptors that did arrive
    /// were closed.
    case truncatedControlData(receivedDescriptors: Int)
    /// A seqpacket frame whose header length disagrees with the packet size.
    case lengthMismatch(declared: Int, actual: Int)
    /// A stream that ended in the middle of a frame: `received` bytes of it had arrived.
    case truncatedStream(received: Int)
    /// A frame flag bit this build does not know.
    case unknownFlags(UInt8)
    /// A message on an id in the reserved band that the handshake did not agree on.
    case unagreedReservedCircuit(id: UInt64)
    /// A message on an idle circuit that only this side may start conversations on.
    case messageOnIdleCircuit(id: UInt64)
    /// The peer sent on a conversation after ending it.
    case messageAfterEnd(id: UInt64)
    /// The peer sent more than the credit this side granted on a circuit.
    case creditExceeded(id: UInt64, received: UInt64, granted: UInt64)
    /// A malformed credit frame.
    case malformedCredit(id: UInt64)
    /// A handshake frame that could not be decoded, or a frame before the handshake.
    case malformedHandshake(String)
    /// The two ends disagree: `field` and what each side said.
    case handshakeMismatch(field: String, ours: String, theirs: String)
    /// The peer did not complete the handshake in time.
    case handshakeTimeout(milliseconds: Int)
    /// A configuration that cannot work (checked before any I/O).
    case invalidConfiguration(String)
    /// The peer closed the transport (end of file).
    case peerClosed
    /// This side closed the transport.
    case closed
    /// Every circuit this side may start a conversation on is busy.
    case noIdleCircuit
    /// The handle's conversation has ended; the circuit is idle and the handle unusable.
    case conversationEnded(id: UInt64)
    /// `reserved(_:)` named an id the transport did not reserve.
    case notReserved(id: UInt64)
    /// Reserved circuits carry one endless conversation; `end` is not allowed on them.
    case endOnReservedCircuit(id: UInt64)
    /// A peer set the end flag on a reserved circuit.
    case peerEndedReservedCircuit(id: UInt64)
    /// A payload or descriptor count larger than the peer accepts.
    case messageTooLarge(length: Int, descriptors: Int, peerLimit: Int, peerDescriptorLimit: Int)
    /// Two tasks waited on the same circuit at once.
    case concurrentReceive(id: UInt64)
    /// Two tasks waited in `accept()` at once.
    case concurrentAccept
    /// A system call failed.
    case system(SystemCallError)

    public var description: String {
        switch self {
        case let .truncatedHeader(received, required):
            return "truncated frame header: \(received) bytes, need \(required)"
        case let .circuitOutOfRange(id, max):
            return "circuit id \(id) out of range (maxCircuits \(max))"
        case let .unknownKind(kind):
            return "unknown frame kind \(kind)"
        case let .oversized(length, limit):
            return "message of \(length) bytes exceeds the limit of \(limit)"
        case let .unexpectedDescriptors(count, context):
            return "\(count) file descriptor(s) where none may come: \(context)"
        case let .descriptorCountMismatch(declared, received):
            return "frame declared \(declared) descriptor(s), \(received) arrived"
        case let .truncatedControlData(received):
            return "ancillary data truncated (MSG_CTRUNC); closed the \(received) descriptor(s) that arrived"
        case let .lengthMismatch(declared, actual):
            return "frame declares \(declared) payload bytes, packet holds \(actual)"
        case let .truncatedStream(received):
            return "the stream ended in the middle of a frame (\(received) bytes of it arrived)"
        case let .unknownFlags(flags):
            return "unknown frame flags 0x\(String(flags, radix: 16))"
        case let .unagreedReservedCircuit(id):
            return "message on reserved circuit \(id), which the handshake did not agree on"
        case let .messageOnIdleCircuit(id):
            return "peer sent on idle circuit \(id), which only this side may start"
        case let .messageAfterEnd(id):
            return "peer sent on circuit \(id) after ending its conversation"
        case let .creditExceeded(id, received, granted):
            return "peer exceeded its credit on circuit \(id): \(received) > \(granted) bytes"
        case let .malformedCredit(id):
            return "malformed credit frame on circuit \(id)"
        case let .malformedHandshake(why):
            return "malformed handshake: \(why)"
        case let .handshakeMismatch(field, ours, theirs):
            return "handshake mismatch on \(field): we have \(ours), peer has \(theirs)"
        case let .handshakeTimeout(ms):
            return "peer sent no handshake within \(ms) ms"
        case let .invalidConfiguration(why):
            return "invalid transport configuration: \(why)"
        case .peerClosed:
            return "peer closed the transport"
        case .closed:
            return "transport closed"
        case .noIdleCircuit:
            return "no idle circuit"
        case let .conversationEnded(id):
            return "conversation on circuit \(id) has ended"
        case let .notReserved(id):
            return "circuit \(id) is not a reserved circuit of this transport"
        case let .endOnReservedCircuit(id):
            return "cannot end the conversation on reserved circuit \(id)"
        case let .peerEndedReservedCircuit(id):
            return "peer ended reserved circuit \(id)"
        case let .messageTooLarge(length, fds, limit, fdLimit):
            return "message of \(length) bytes with \(fds) descriptor(s) exceeds the peer's limit (\(limit) bytes, \(fdLimit) descriptors)"
        case let .concurrentReceive(id):
            return "two receivers on circuit \(id)"
        case .concurrentAccept:
            return "two tasks in accept() at once"
        case let .system(error):
            return error.description
        }
    }
}
