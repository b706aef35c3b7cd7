from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

NOTES: list[str] = []


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "index.html")


def about(request: HttpRequest) -> HttpResponse:
    return render(request, "about.html")


def notes(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        NOTES.append(request.POST.get("text", ""))
        # Turbo Drive expects a redirect after a successful form submission.
        return redirect("notes")
    return render(request, "notes.html", {"notes": NOTES})
