import Foundation
import RoleProtocol
import TestSupport
import XCTest

/// ARCHITECTURE.md's module map is the truth about dependencies: it must match Package.swift
/// and every import in Sources, and no module may import one listed above it.
final class ModuleMapTests: XCTestCase {
    /// Module and what it depends on, in the table's order (top first).
    private func documentedMap() throws -> [(module: String, dependencies: Set<String>)] {
        let text = try String(contentsOfFile: packageRoot + "/ARCHITECTURE.md", encoding: .utf8)
        guard let start = text.range(of: "<!-- module-map -->"), let end = text.range(of: "<!-- /module-map -->") else {
            throw XCTSkip("ARCHITECTURE.md has no module-map markers")
        }
        var rows: [(String, Set<String>)] = []
        for line in text[start.upperBound..<end.lowerBound].split(separator: "\n") where line.hasPrefix("| `") {
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            let names = cells[1].split(separator: ",").map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "` ")) }
            let dependencies = Set(cells[2].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
            for name in names { rows.append((name, dependencies)) }
        }
        return rows
    }

    private var sourceModules: [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: packageRoot + "/Sources"))?.sorted() ?? []
    }

    /// The project modules `module`'s Swift files import.
    private func imports(of module: String, among modules: Set<String>) throws -> Set<String> {
        let directory = packageRoot + "/Sources/" + module
        var found: Set<String> = []
        for file in try FileManager.default.subpathsOfDirectory(atPath: directory) where file.hasSuffix(".swift") {
            let text = try String(contentsOfFile: directory + "/" + file, encoding: .utf8)
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ")
                if let i = words.firstIndex(of: "import"), i + 1 < words.count, modules.contains(String(words[i + 1])) {
                    found.insert(String(words[i + 1]))
                }
            }
        }
        return found
    }

    /// The project modules a target names as dependencies in Package.swift.
    private func packageDependencies(of module: String, among modules: Set<String>, manifest: String) -> Set<String>? {
        // The target's own declaration, not a product naming it.
        var search = manifest.startIndex..<manifest.endIndex
        var found: Range<String.Index>?
        while let candidate = manifest.range(of: "name: \"\(module)\"", range: search) {
            let from = manifest.index(candidate.lowerBound, offsetBy: -40, limitedBy: manifest.startIndex) ?? manifest.startIndex
            let before = String(manifest[from..<candidate.lowerBound])
            if before.contains(".target(") || before.contains(".executableTarget(") {
                found = candidate
                break
            }
            search = candidate.upperBound..<manifest.endIndex
        }
        guard let name = found else { return nil }
        let rest = manifest[name.upperBound...]
        let next = ["\n        .target(", "\n        .executableTarget(", "\n        .testTarget(", "\n        .systemLibrary("]
            .compactMap { rest.range(of: $0)?.lowerBound }.min() ?? rest.endIndex
        let block = rest[..<next]
        var declared: Set<String> = []
        for module in modules where block.contains("\"\(module)\"") { declared.insert(module) }
        return declared
    }

    func testTheMapMatchesPackageSwiftAndTheImports() throws {
        let map = try documentedMap()
        let modules = Set(sourceModules)
        XCTAssertEqual(Set(map.map(\.module)), modules, "every module in Sources has a row, and no row names a module that is not there")
        let manifest = try String(contentsOfFile: packageRoot + "/Package.swift", encoding: .utf8)
        for (module, documented) in map where modules.contains(module) {
            let imported = try imports(of: module, among: modules)
            XCTAssertEqual(imported, documented, "\(module): imports in Sources/\(module) vs ARCHITECTURE.md")
            if let declared = packageDependencies(of: module, among: modules, manifest: manifest) {
                XCTAssertEqual(declared, documented, "\(module): Package.swift vs ARCHITECTURE.md")
            }
        }
    }

    func testNoModuleImportsOneAboveIt() throws {
        let map = try documentedMap()
        let position = Dictionary(map.enumerated().map { ($0.element.module, $0.offset) }, uniquingKeysWith: { a, _ in a })
        for (module, dependencies) in map {
            for dependency in dependencies {
                XCTAssertGreaterThan(position[dependency] ?? -1, position[module]!, "\(module) depends on \(dependency), listed above it")
            }
        }
        // Every process kind has a module of its name: the supervisor, the nursery and each
        // declared sandboxed role.
        let roles = ([Role.supervisor, .nursery] + RoleDeclaration.sandboxed.map(\.role)).map { $0.rawValue.prefix(1).uppercased() + $0.rawValue.dropFirst() }
        XCTAssertEqual(Set(roles).subtracting(map.map(\.module)), [], "a role without a module of its own")
        for (module, dependencies) in map where roles.contains(module) {
            XCTAssertTrue(dependencies.isDisjoint(with: roles), "\(module) imports another role: \(dependencies.intersection(roles))")
        }
    }
}
