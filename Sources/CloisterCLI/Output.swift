import ArgumentParser
import FoundationEssentials
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Writes `text` to standard error as it is (messages carry their own newline).
func printToStandardError(_ text: String) {
    // writeAll retries EINTR and short writes (swift-system); a closed stderr loses the text.
    _ = try? Array(text.utf8).withUnsafeBytes { try FileDescriptor.standardError.writeAll($0) }
}

/// Writes `text` next to `path` and renames it over `path`, so that a reader (a collector, a
/// role starting) sees the old file or the new one, never half of one. `mode` regardless of the
/// umask: readers may run as another user.
func writeAtomically(_ text: String, to path: String, mode: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead]) throws {
    let temporary = path + ".tmp-\(getpid())"
    do {
        let fd = try FileDescriptor.open(temporary, .writeOnly, options: [.create, .truncate, .closeOnExec, .noFollow],
                                         permissions: mode, retryOnInterrupt: true)
        do {
            try fd.closeAfter {
                _ = try Array(text.utf8).withUnsafeBytes { try fd.writeAll($0) }
                _ = try valueOrErrno("fchmod", detail: temporary) { fchmod(fd.rawValue, mode.rawValue) }
                _ = try valueOrErrno("fsync", detail: temporary) { fsync(fd.rawValue) }
            }
            _ = try valueOrErrno("rename", detail: "\(temporary) to \(path)") { rename(temporary, path) }
        } catch {
            unlink(temporary)
            throw error
        }
    } catch {
        throw ValidationError("cannot write \(path): \(error)")
    }
}

/// Any JSON value, for options whose values are JSON where they parse as JSON (ttyd's -t).
/// Integers stay integers, so `fontSize=20` is sent as 20, not 20.0.
enum JSONValue: Codable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) { self = .integer(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}
