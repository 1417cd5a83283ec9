import RoleProtocol
#if !LIBFUZZER
import FuzzReplay
#endif

/// Every role link's decoder, on bytes a compromised peer could send: the first byte picks
/// the message type and the descriptor count; whatever decodes must encode to bytes that
/// decode to the same message.
func check<M: LinkMessage>(_: M.Type, _ bytes: [UInt8], descriptors: Int) {
    guard let message = try? M(decoding: bytes, descriptors: descriptors) else { return }
    let again = try? M(decoding: message.encoded, descriptors: message.descriptorCount)
    precondition(again == message, "\(M.self) does not survive a round trip: \(message)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    let selector = bytes[0], payload = Array(bytes.dropFirst())
    let descriptors = Int(selector >> 4) % 3
    switch selector & 0x0f {
    case 0: check(SupervisorToWorker.self, payload, descriptors: descriptors)
    case 1: check(SupervisorToVault.self, payload, descriptors: descriptors)
    case 2: check(VaultToSupervisor.self, payload, descriptors: descriptors)
    case 3: check(WorkerToVault.self, payload, descriptors: descriptors)
    case 4: check(VaultToWorker.self, payload, descriptors: descriptors)
    case 5: check(VaultToNursery.self, payload, descriptors: descriptors)
    case 6: check(NurseryToVault.self, payload, descriptors: descriptors)
    case 7: check(WorkerToKeyholder.self, payload, descriptors: descriptors)
    case 8: check(KeyholderToWorker.self, payload, descriptors: descriptors)
    case 9: check(SupervisorToKeyholder.self, payload, descriptors: descriptors)
    case 10: check(KeyholderToSupervisor.self, payload, descriptors: descriptors)
    case 11: check(WorkerToSupervisor.self, payload, descriptors: descriptors)
    case 12: check(RecorderFeed.self, payload, descriptors: descriptors)
    case 13: check(SupervisorToRecorder.self, payload, descriptors: descriptors)
    case 14: check(RecorderToSupervisor.self, payload, descriptors: descriptors)
    default: break
    }
    return 0
}

#if !LIBFUZZER
/// The ordinary build's program: this initializer runs at start (script mode) and replays
/// the files given. A declaration, because even an inactive block must parse as a library.
let replayed: Void = replay(fuzz)
#endif

