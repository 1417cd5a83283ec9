import COpenSSLClient

#if canImport(Glibc)
import Glibc
#endif

/// TLS for the test and benchmark client, with OpenSSL's libssl: the same client measures a
/// server over TLS as over plain TCP. It offers HTTP/1.1 by ALPN and, for a benchmark against
/// a self-signed certificate, need not verify the chain.
final class ClientTLS {
    private let context: OpaquePointer
    let connection: OpaquePointer

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Over the connected socket `fd` (which stays the caller's).
    init(fd: Int32, verify: Bool) throws {
        guard let context = SSL_CTX_new(TLS_client_method()) else { throw Failure(description: "SSL_CTX_new failed") }
        self.context = context
        SSL_CTX_set_verify(context, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)
        if verify { SSL_CTX_set_default_verify_paths(context) }
        let alpn: [UInt8] = [8] + Array("http/1.1".utf8)
        _ = SSL_CTX_set_alpn_protos(context, alpn, UInt32(alpn.count))
        guard let connection = SSL_new(context) else {
            SSL_CTX_free(context)
            throw Failure(description: "SSL_new failed")
        }
        self.connection = connection
        SSL_set_fd(connection, fd)
        // Every property is set: a throw from here on runs deinit, which frees both.
        guard SSL_connect(connection) == 1 else { throw Failure(description: "TLS handshake failed: \(Self.error())") }
    }

    deinit {
        SSL_free(connection)
        SSL_CTX_free(context)
    }

    /// As read(2): bytes read, 0 at the end, -1 with errno (EAGAIN when the socket's timeout
    /// passed).
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = SSL_read(connection, buffer.baseAddress, Int32(buffer.count))
        if n > 0 { return Int(n) }
        switch SSL_get_error(connection, n) {
        case SSL_ERROR_ZERO_RETURN: return 0
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            errno = EAGAIN
            return -1
        case SSL_ERROR_SYSCALL where errno == 0: return 0
        default: return -1
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        var sent = 0
        while sent < bytes.count {
            let n = SSL_write(connection, bytes.baseAddress! + sent, Int32(bytes.count - sent))
            guard n > 0 else { throw Failure(description: "SSL_write: \(Self.error())") }
            sent += Int(n)
        }
    }

    static func error() -> String {
        var messages: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var text = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &text, text.count)
            messages.append(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages.isEmpty ? "errno \(errno)" : messages.joined(separator: "; ")
    }
}
