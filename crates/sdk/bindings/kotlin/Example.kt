// A nightly chat backup from an Android app with backlock's SDK (docs/SDK.md).
// Not compiled here: Debian's Kotlin (1.3) is older than UniFFI's output needs.
// Put generated/dev/backlock/backlock.kt in the app's sources, libbacklock.so (built
// with cargo-ndk for each ABI) in jniLibs, and depend on net.java.dev.jna:jna (aar).
package dev.backlock.example

import dev.backlock.CancelToken
import dev.backlock.Device
import dev.backlock.Progress
import dev.backlock.ProgressListener
import dev.backlock.Exception as BacklockException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

class NightlyBackup(private val filesDir: String, private val repoUrl: String) {
    val cancel = CancelToken()

    // Long operations block: run them off the UI thread.
    suspend fun run(chatDir: String, key: String, onProgress: (Progress) -> Unit) =
        withContext(Dispatchers.IO) {
            val device = Device("$filesDir/backlock")
            device.setThreads(2u) // a phone in the background
            val repo = device.openRepository(repoUrl, key)
            try {
                repo.backup(listOf(chatDir), object : ProgressListener {
                    override fun onProgress(progress: Progress) = onProgress(progress)
                }, cancel)
            } catch (e: BacklockException.Cancelled) {
                null // what was stored is kept; the next run goes on from it
            } catch (e: BacklockException.Storage) {
                null // retry later (no network, store full)
            }
        }
}
