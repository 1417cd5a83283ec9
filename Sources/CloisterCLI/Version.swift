import ArgumentParser
import Circuits

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version and build id.")
    static let version = "0.1.0"

    @Flag(help: "Print only the build id (what circuit handshakes compare).")
    var buildID = false

    func run() {
        print(buildID ? BuildID.current : "cloister \(Self.version) (build \(BuildID.current))")
    }
}
