#if canImport(Glibc)
import Glibc
#endif

/// Runs a fuzz target's entry point on every file named on the command line (a directory: on
/// each file in it), as libFuzzer does when given files to run: what `make test` does with each
/// target's corpus, so a target that stops building or crashes on its seeds fails there, in
/// the ordinary build. `make fuzz` builds the same targets against libFuzzer instead, which
/// supplies their `main` and searches for new inputs.
/// Exits when done: 0 when every input ran, 2 when an input cannot be read.
public func replay(_ body: (UnsafeRawPointer, Int) -> CInt, arguments: [String] = CommandLine.arguments) {
    func fail(_ message: String) -> Never {
        let line = Array("\(arguments[0]): \(message)\n".utf8)
        _ = write(2, line, line.count)
        exit(2)
    }
    var inputs: [String] = []
    for path in arguments.dropFirst() {
        var status = stat()
        guard stat(path, &status) == 0 else { fail("\(path): \(String(cString: strerror(errno)))") }
        guard status.st_mode & S_IFMT == S_IFDIR else {
            inputs.append(path)
            continue
        }
        guard let directory = opendir(path) else { fail("\(path): \(String(cString: strerror(errno)))") }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(directory)
        inputs += names.sorted().map { path + "/" + $0 }
    }
    guard !inputs.isEmpty else { fail("no input to replay (give files or a corpus directory)") }
    for input in inputs {
        guard let file = fopen(input, "rb") else { fail("\(input): \(String(cString: strerror(errno)))") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n == 0 { break }
            bytes += chunk[..<n]
        }
        fclose(file)
        _ = bytes.withUnsafeBytes { body($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, $0.count) }
    }
    print("\(arguments[0].split(separator: "/").last.map(String.init) ?? arguments[0]): \(inputs.count) inputs replayed")
    exit(0)
}
