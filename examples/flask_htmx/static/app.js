// Any app can react to deploysync's events; nothing is required of it.
document.addEventListener("deploysync:stale", () => document.body.classList.add("is-stale"))
