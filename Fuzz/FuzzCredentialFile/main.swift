import Supervisor

/// The credential file's reader on any bytes the file could hold: its first line, or refused.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    if let line = try? CredentialFile.parse(bytes, path: "fuzz") {
        precondition(!line.contains("\n") && !line.contains("\r"), "a credential with a line break")
    }
    return 0
}
