import CShim

/// `count` bytes from getrandom(2), in as few calls as the kernel allows (one, for up to
/// 256 bytes). The corresponding C function is `getrandom`.
public func randomBytes(_ count: Int) throws(SystemCallError) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var filled = 0
    while filled < count {
        let got = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(SystemCallError) in
                try valueOrErrno("getrandom") { cloister_getrandom(buffer.baseAddress! + filled, count - filled) }
            }
        }
        filled += try got.get()
    }
    return bytes
}
