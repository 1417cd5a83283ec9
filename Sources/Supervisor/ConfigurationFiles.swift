import Processes
import RoleProtocol
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What is wrong with a file or directory the configuration names, in a sentence that names it.
public struct ConfigurationProblem: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// A file holding secrets: a regular file that only its owner may read or write, read whole
/// up to `limit` bytes (one more tells the caller it is too large).
enum OwnerOnlyFile {
    static func read(_ path: String, limit: Int) throws(ConfigurationProblem) -> [UInt8] {
        var info = stat()
        guard stat(path, &info) == 0 else { throw ConfigurationProblem("\(lastError("stat", detail: path))") }
        guard info.st_mode & S_IFMT == S_IFREG else { throw ConfigurationProblem("\(path) is not a regular file") }
        guard info.st_mode & 0o077 == 0 else {
            throw ConfigurationProblem("\(path) is readable or writable by group or others (mode \(String(info.st_mode & 0o777, radix: 8)))")
        }
        do {
            let file = try FileDescriptor.open(path, .readOnly, options: .closeOnExec)
            defer { try? file.close() }
            return try file.readToEnd(limit: limit)
        } catch {
            throw ConfigurationProblem("\(path): \(error)")
        }
    }
}

/// The credential file: its first line, USER:PASSWORD. Only its owner may read it: a
/// credential on the command line would be visible to every user in /proc.
public enum CredentialFile {
    public static func read(_ path: String) throws(ConfigurationProblem) -> String {
        try parse(try OwnerOnlyFile.read(path, limit: maxBytes), path: path)
    }

    /// The credential in a credential file's bytes: its first line, which must be UTF-8.
    public static let maxBytes = 64 * 1024

    public static func parse(_ bytes: [UInt8], path: String) throws(ConfigurationProblem) -> String {
        guard bytes.count <= maxBytes else { throw ConfigurationProblem("\(path) is larger than 64 KiB") }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw ConfigurationProblem("\(path) is not UTF-8 text") }
        return String(text.split(whereSeparator: \.isNewline).first ?? "")
    }
}

/// A users file (`--users-file`): `USER:HASH` lines (`WebUsers`), in a file only its owner
/// may read or write, as a credential file.
public enum UsersFile {
    public static func read(_ path: String) throws(ConfigurationProblem) -> WebUsers {
        let bytes = try OwnerOnlyFile.read(path, limit: WebUsers.maxBytes + 1)
        do {
            return try WebUsers.parse(bytes)
        } catch {
            throw ConfigurationProblem("\(path): \(error)")
        }
    }
}

/// The control socket's directory: created 0700 if missing; an existing one must belong to
/// this user (or root) and not be writable by others unless sticky, or someone else could put
/// their own socket in its place.
public enum ControlDirectory {
    public static func prepare(forSocket socket: String) throws(ConfigurationProblem) {
        let directory = FilePath(socket).removingLastComponent().string
        guard !directory.isEmpty else { return }
        var info = stat()
        if stat(directory, &info) != 0 {
            guard errno == ENOENT, mkdir(directory, 0o700) == 0 else {
                throw ConfigurationProblem("cannot create \(directory): \(lastError("mkdir", detail: directory))")
            }
            return
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw ConfigurationProblem("\(directory) is not a directory") }
        guard info.st_uid == geteuid() || info.st_uid == 0 else { throw ConfigurationProblem("\(directory) belongs to uid \(info.st_uid)") }
        let sticky = info.st_mode & S_ISVTX != 0
        guard info.st_mode & 0o022 == 0 || sticky else { throw ConfigurationProblem("\(directory) is writable by others") }
    }
}
