// A nightly chat backup from an iOS app with backlock's SDK (docs/SDK.md).
// Not compiled here: no Swift toolchain is packaged for this machine. Add
// generated/backlock.swift to the app target, and generated/backlockFFI.h with
// backlockFFI.modulemap plus libbacklock.a (built for aarch64-apple-ios) as an
// XCFramework.
import Foundation

final class NightlyBackup: ProgressListener {
    let cancel = CancelToken()

    func onProgress(progress: Progress) throws {
        // Called on the backup's threads: hand it to the UI on the main queue.
        DispatchQueue.main.async { print("\(progress.bytesDone) of \(progress.bytesTotal)") }
    }

    // Long operations block: run them on a background queue.
    func run(support: URL, repoURL: String, chatDir: URL, key: String) {
        DispatchQueue.global(qos: .background).async {
            do {
                let device = try Device(home: support.appendingPathComponent("backlock").path)
                device.setThreads(threads: 2) // a phone in the background
                let repo = try device.openRepository(location: repoURL, key: key)
                let summary = try repo.backup(paths: [chatDir.path], progress: self, cancel: self.cancel)
                print("snapshot \(summary.snapshot): \(summary.bytesNew) bytes new")
            } catch Error.Cancelled(let message) {
                print(message) // the next run goes on from what was stored
            } catch {
                print("backup failed: \(error)")
            }
        }
    }
}
