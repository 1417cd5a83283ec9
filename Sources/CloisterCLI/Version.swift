import ArgumentParser
import CShim
import Circuits

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version and build id.")
    static let version = "0.1.0"

    @Flag(help: "Print only the build id (what circuit handshakes compare).")
    var buildID = false

    func run() {
        print(buildID ? BuildID.current : "cloister \(Self.description)")
    }

    /// The version, the packager's label if the binary has one, and the build id.
    static var description: String {
        let label = String(cString: cloister_build_label())
        return "\(version)\(label.isEmpty ? "" : " \(label)") (build \(BuildID.current))"
    }
}
