from achievements_service.server import serve

serve()
