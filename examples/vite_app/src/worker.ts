// A module worker: Vite emits its chunk without naming it in the manifest.
self.onmessage = (event: MessageEvent<number>) => self.postMessage(event.data * 2);
